"""tunnelnb: operate IoT devices behind Huawei Cloud IoTDA's Secure Tunnel from notebooks."""

from __future__ import annotations

__version__ = "0.1.0"
