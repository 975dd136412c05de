"""edgeloop: self-healing forecasting for IoT sensors on the edge."""

__version__ = "0.1.0"
