from cluster.config.loader import ConfigError, load_config, parse_config
from cluster.config.schema import GatewayConfig, ModelConfig, OwcConfig

__all__ = ["ConfigError", "GatewayConfig", "ModelConfig", "OwcConfig", "load_config", "parse_config"]
