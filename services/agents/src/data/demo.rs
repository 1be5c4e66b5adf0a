//! The demo database the data agent reads in dev mode: an `invoices` table
//! over the current and two previous months, the same rows for the same
//! month every time. Created once; never overwritten.

use std::path::Path;

use rusqlite::Connection;
use time::{Date, Month, OffsetDateTime};

const CUSTOMERS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];

pub fn ensure(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut conn = Connection::open(path)?;
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE invoices (
            id INTEGER PRIMARY KEY,
            customer TEXT NOT NULL,
            amount_cents INTEGER NOT NULL,
            issued_on TEXT NOT NULL
        )",
    )?;
    let today = OffsetDateTime::now_utc().date();
    let mut month_start = Date::from_calendar_date(today.year(), today.month(), 1)?;
    for _ in 0..3 {
        for day in 1..=12u8 {
            for (c, customer) in CUSTOMERS.iter().enumerate() {
                let amount = 1_000 + (day as i64 * 731 + c as i64 * 1_913) % 9_000;
                let date = month_start.replace_day(day)?;
                tx.execute(
                    "INSERT INTO invoices (customer, amount_cents, issued_on) VALUES (?1, ?2, ?3)",
                    rusqlite::params![customer, amount * 10, date.to_string()],
                )?;
            }
        }
        month_start = previous_month(month_start)?;
    }
    tx.commit()?;
    Ok(())
}

fn previous_month(d: Date) -> anyhow::Result<Date> {
    let (year, month) = match d.month() {
        Month::January => (d.year() - 1, Month::December),
        m => (d.year(), m.previous()),
    };
    Ok(Date::from_calendar_date(year, month, 1)?)
}
