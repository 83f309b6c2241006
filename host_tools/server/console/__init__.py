"""The web console: plain HTML, JS and CSS served by the HTTP API at /console/ (no build step)."""
