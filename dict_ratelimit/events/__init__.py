"""Alert events: the CloudEvents envelope, the outbox publisher and the Pulsar sensor."""
