// fota board esp32_generic: MicroPython's ESP32_GENERIC with the OTA partition table.
// The ESP32 port includes this header from mpconfigport.h; every board directory needs one.

#ifndef MICROPY_HW_BOARD_NAME
#define MICROPY_HW_BOARD_NAME "fota ESP32 (4 MiB, OTA)"
#endif

#ifndef MICROPY_HW_MCU_NAME
#define MICROPY_HW_MCU_NAME "ESP32"
#endif
