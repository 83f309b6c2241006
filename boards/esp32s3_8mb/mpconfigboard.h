// fota board esp32s3_8mb: MicroPython's ESP32_GENERIC_S3 with the 8 MiB+ OTA partition table.
// The ESP32 port includes this header from mpconfigport.h; every board directory needs one.

#ifndef MICROPY_HW_BOARD_NAME
#define MICROPY_HW_BOARD_NAME "fota ESP32-S3 (8 MiB, OTA)"
#endif
#define MICROPY_HW_MCU_NAME "ESP32-S3"

// REPL on the UART too, for modules with a USB-UART bridge instead of native USB (as ESP32_GENERIC_S3).
#define MICROPY_HW_ENABLE_UART_REPL (1)

#define MICROPY_HW_I2C0_SCL (9)
#define MICROPY_HW_I2C0_SDA (8)
