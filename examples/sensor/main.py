# main.py of the sensor example: copy it to the board's filesystem (mpremote fs cp examples/sensor/main.py :main.py)
import app
from fota import device

app.run(device.start(app))
