"""fota device-side code: signature verification and update helpers."""
