/// AMQP topic matching: words are separated by `.`, `*` matches exactly one
/// word and `#` matches zero or more.
pub fn matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    matches_words(&pattern, &key)
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((word, rest)) => match key.split_first() {
            Some((k, key_rest)) => (*word == "*" || word == k) && matches_words(rest, key_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn amqp_topic_rules() {
        assert!(matches("echo", "echo"));
        assert!(!matches("echo", "coder"));
        assert!(matches("#", "anything.at.all"));
        assert!(matches("#", ""));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.#", "a"));
        assert!(matches("a.#.z", "a.b.c.z"));
        assert!(!matches("*.x", "x"));
    }
}
