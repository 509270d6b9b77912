"""The providers: OpenAI-compatible endpoints, the catalogue ids (globs) each serves, and which one
serves a model. OpenRouter comes last, serving ``*``, when its key is set."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from .._errors import ConfigError, UpstreamError
from .._settings import UpstreamSettings

__all__ = ["APP_TITLE", "APP_URL", "Provider", "pick_provider", "providers_from_settings"]

# OpenRouter app attribution: HTTP-Referer is the app's URL (its identity in the rankings);
# X-OpenRouter-Title is its display name, X-Title the older name OpenRouter still accepts.
APP_URL = "https://github.com/adaptive-router/adaptive-router"
APP_TITLE = "adaptive-router"
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_HEADER_CHARS = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class Provider:
    """One OpenAI-compatible endpoint and the catalogue ids (globs) it serves.

    The key and the extra headers stay out of ``repr`` so that a logged provider leaks nothing.
    """

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = ("*",)
    strip_prefix: bool = False
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)

    def __post_init__(self) -> None:
        # A key that cannot travel in a header would fail later in h11, whose message quotes the
        # whole header; refuse it here, naming the setting but never the value.
        if self.api_key is not None and not _KEY_CHARS.fullmatch(self.api_key):
            raise ConfigError(f"upstream.providers.{self.name}.api_key", "must be visible ASCII, no spaces")
        if self.api_key is not None and _has_userinfo(self.base_url):
            raise ConfigError(
                _base_url_key(self.name),
                "has user:pass@ credentials and an api_key is set too: give one of them (httpx would "
                "send both, and the provider refuses every request)",
            )
        for header, value in self.headers.items():
            if not _HEADER_CHARS.fullmatch(value):
                key = f"upstream.providers.{self.name}.headers.{header}"
                raise ConfigError(key, "must be printable ASCII")

    def serves(self, model_id: str) -> bool:
        return any(fnmatchcase(model_id, pattern) for pattern in self.models)

    def upstream_model(self, model_id: str) -> str:
        """The name this provider knows the model by: ``ollama/llama3`` -> ``llama3`` when stripping."""
        if self.strip_prefix:
            return model_id.partition("/")[2] or model_id
        return model_id

    @property
    def chat_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"


def _has_userinfo(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False  # a malformed URL is reported where it is used
    return "@" in parts.netloc


def _base_url_key(name: str) -> str:
    return "upstream.openrouter_base_url" if name == "openrouter" else f"upstream.providers.{name}.base_url"


def providers_from_settings(upstream: UpstreamSettings, openrouter_key: str | None) -> list[Provider]:
    """The named providers in settings order, then OpenRouter (serving ``*``) when it has a key."""
    providers = [
        Provider(
            name=name,
            base_url=spec.base_url,
            api_key=spec.resolved_key(),
            models=tuple(spec.models),
            strip_prefix=spec.strip_prefix,
            headers=dict(spec.headers),
        )
        for name, spec in upstream.providers.items()
    ]
    if openrouter_key:
        attribution = {"HTTP-Referer": APP_URL, "X-OpenRouter-Title": APP_TITLE, "X-Title": APP_TITLE}
        openrouter = Provider(
            name="openrouter",
            base_url=upstream.openrouter_base_url,
            api_key=openrouter_key,
            models=("*",),
            headers=attribution,
        )
        providers.append(openrouter)
    return providers


def pick_provider(providers: Sequence[Provider], model_id: str) -> Provider:
    """The first provider one of whose globs matches ``model_id``."""
    for provider in providers:
        if provider.serves(model_id):
            return provider
    raise UpstreamError(model_id, "no configured provider serves this model")
