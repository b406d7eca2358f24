"""fan-edge: FAN face-alignment networks from training to phones and edge boxes."""

__version__ = "0.1.0"
