"""fota, the device side: check a signed package, write a slot, confirm across the reboot.

The only top-level package fota puts on a device: `fota.agent` (orchestration), `fota.check`,
`fota.slot`, `fota.boot`, `fota.link` (update links over `fota.mqtt` and `fota.coap`), `fota.device`
(the provisioned entry point). Nothing is imported here: import the module you need.
"""
