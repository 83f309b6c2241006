"""The update server: package store, device registry, MQTT service, embedded broker."""
