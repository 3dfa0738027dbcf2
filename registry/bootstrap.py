"""The composition root: builds engine, store, models, handlers and broker from settings.

Entry points (CLI commands, the API, the bus consumer) get what they need from here and nothing
else constructs these objects. Every entry point calls `Container.encrypt()` before it migrates
or writes anything (`run_projector` and the adapter's runtime do the same through
`registry.service.keys.enable`), so personal data is sealed whichever process writes it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from events import EventStore, create_engine
from events.crypto import Crypto
from registry.settings import Settings


def import_object(path: str) -> Any:
    """`"package.module:Name"` → the object; a clear error when it cannot be found."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'module:Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


def load_models(settings: Settings) -> tuple[type[Any], type[Any] | None]:
    """The user and OAuth account models to project into: the app's, or the defaults."""
    from projections import OAuthAccount, User

    if settings.user_model:
        user = import_object(settings.user_model)
        oauth = import_object(settings.oauth_model) if settings.oauth_model else None
        return user, oauth
    return User, OAuthAccount


@dataclass
class Container:
    """Everything an entry point needs, built once from settings."""

    settings: Settings
    engine: AsyncEngine
    store: EventStore
    user_table: type[Any]
    oauth_table: type[Any] | None
    extras: dict[str, Any] = field(default_factory=dict)

    def handlers(self) -> Any:
        """The command handlers (the one write path) for these models, built once.

        Inline projection when `REGISTRY_PROJECTION_MODE=inline`. With an app model
        (`REGISTRY_USER_MODEL`), profile keys are checked against its custom columns; with the
        default models they are kept in the log for whichever app model projects them.
        """
        handlers = self.extras.get("handlers")
        if handlers is None:
            from projections import UserProjection
            from registry.adapter.runtime import EncryptingHandlers, custom_columns

            inline = None
            if self.settings.projection_mode == "inline":
                inline = UserProjection(self.user_table, self.oauth_table)
            custom = self.settings.user_model is not None
            # a safety net: the handlers turn encryption on before their first write when the
            # entry point has not (each one calls `encrypt()` at start)
            handlers = EncryptingHandlers(
                self.engine,
                self.store,
                profile_fields=custom_columns(self.user_table) if custom else None,
                inline_projection=inline,
                settings=self.settings,
                models=(self.user_table, self.oauth_table),
            )
            self.extras["handlers"] = handlers
        return handlers

    async def encrypt(self) -> Crypto:
        """Turn on sealing of personal data for this container's engine
        (`registry.service.keys.enable` with these models): call it first, before the schema is
        migrated or anything written.
        Raises `MasterKeyError` for a wrong or missing master key; nothing is written then."""
        from registry.service.keys import enable

        return await enable(self.engine, self.settings, self.user_table, self.oauth_table)

    async def aclose(self) -> None:
        await self.engine.dispose()


def build(settings: Settings) -> Container:
    engine = create_engine(settings.database_url)
    user_table, oauth_table = load_models(settings)
    return Container(
        settings=settings,
        engine=engine,
        store=EventStore(engine),
        user_table=user_table,
        oauth_table=oauth_table,
    )
