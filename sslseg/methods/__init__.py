"""One LightningModule per method (`base.SemiSegModule` is the contract); `method_class` maps a config to its class."""

from sslseg.methods.registry import method_class

__all__ = ["method_class"]
