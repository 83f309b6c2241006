# MicroPython board definition for fota's esp32_generic board, built out of tree:
#   make -C $MICROPY_DIR/ports/esp32 BOARD_DIR=<this directory>     (scripts/build_firmware.sh does it)
# Modelled on ports/esp32/boards/ESP32_GENERIC/mpconfigboard.cmake + mpconfigvariant_OTA.cmake (v1.28).

# An sdkconfig file cannot name this directory, so the line that points ESP-IDF at our partition
# table is written into the build directory at configure time (see sdkconfig.board).
set(FOTA_SDKCONFIG_PARTITIONS ${CMAKE_BINARY_DIR}/sdkconfig.fota_partitions)
file(WRITE ${FOTA_SDKCONFIG_PARTITIONS}
    "CONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions.csv\"\n")

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
    boards/sdkconfig.ble
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${FOTA_SDKCONFIG_PARTITIONS}
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
