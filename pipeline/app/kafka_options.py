"""The aiokafka client options every selfheal client shares (TLS, SASL, timeouts)."""

from __future__ import annotations

from typing import Any

from selfheal.pipeline.core.config import KafkaConfig


def kafka_client_options(cfg: KafkaConfig) -> dict[str, Any]:
    """aiokafka keyword arguments for TLS / SASL from the config (shared by all clients)."""
    opts: dict[str, Any] = {
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "request_timeout_ms": cfg.request_timeout_ms,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(
            cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None,
            certfile=str(cfg.ssl_certfile) if cfg.ssl_certfile else None,
            keyfile=str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None,
            password=cfg.ssl_password.get_secret_value() if cfg.ssl_password else None,
        )
    if cfg.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = (
            cfg.sasl_password.get_secret_value() if cfg.sasl_password else None
        )
    return opts
