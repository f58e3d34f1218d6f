"""Links to upstream brokers (RabbitMQ over AMQP 0-9-1, MQTT, NATS, Redis Streams).

Each bridge is a client of the core with its own nursery, backoff and outbox,
tagging message origins so that nothing loops. Not built yet.
"""
