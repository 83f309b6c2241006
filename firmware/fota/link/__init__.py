"""Update links: one core (offers, events, attempts, back-off), thin MQTT and CoAP adapters."""
