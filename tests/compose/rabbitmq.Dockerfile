# A stand-in for `rabbitmq:4-management`, which cannot be pulled on the
# test machines: Debian's RabbitMQ with the management plugin, listening
# for guest from other containers as the official image does. Built by
# scripts/check-compose under the official image's name.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && rabbitmq-plugins enable --offline rabbitmq_management \
    && printf 'loopback_users.guest = false\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' \
       > /etc/rabbitmq/rabbitmq.conf
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
