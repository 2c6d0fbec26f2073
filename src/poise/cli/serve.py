"""``poise serve``: serve any model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import logging
import os
import sys

import typer

from poise.cli._common import console, expand_paths, shown, user_errors


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        model: str = typer.Option(
            "organism", "--model", "-m", help="Model spec to serve, as `poise audit --model` takes."
        ),
        model_option: list[str] = typer.Option(
            [],
            "--model-option",
            help="KEY=VALUE backend option (device, dtype, chat_template_kwargs, ...); repeatable.",
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        max_batch: int = typer.Option(
            32,
            "--max-batch",
            help="Most rows decoding together (continuous batching) or chats in one generate call. "
            "A request of more samples (n) than this waits for an empty batch and decodes its n rows together.",
        ),
        join_rows: int = typer.Option(
            8,
            "--join-rows",
            help="Most new rows that join a running batch at one step (continuous batching).",
        ),
        join_wait_ms: float = typer.Option(
            50.0,
            "--join-wait-ms",
            help=(
                "While decoding steps are faster than this, new requests wait for --join-rows "
                "company or this long before they join a running batch (ms)."
            ),
        ),
        batch_window_ms: float = typer.Option(
            5.0,
            "--batch-window-ms",
            help="How long an idle server waits for more requests before it starts (ms).",
        ),
        max_tokens_limit: int = typer.Option(
            2048, "--max-tokens-limit", help="Largest max_tokens a request may ask for."
        ),
        max_n: int = typer.Option(128, "--max-n", help="Largest n a request may ask for."),
        served_name: str | None = typer.Option(
            None, "--served-name", help="Model name clients send (default: the --model spec)."
        ),
        api_key: str | None = typer.Option(
            None,
            "--api-key",
            envvar="POISE_API_KEY",
            show_envvar=True,
            help="API key clients must send (Authorization: Bearer KEY) on every route but "
            "/health. Default: none asked (keep --host 127.0.0.1 then).",
        ),
        max_body_bytes: int = typer.Option(
            4 * 1024 * 1024,
            "--max-body-bytes",
            help="Largest request body accepted (bytes); a larger one gets a 413.",
        ),
        firewall: str | None = typer.Option(
            None,
            "--firewall",
            help="Firewall folder (poise firewall fit): off-role requests get a 400.",
            callback=expand_paths,
        ),
        firewall_role: str | None = typer.Option(
            None, "--firewall-role", help="The role whose zone requests must fall in."
        ),
    ) -> None:
        """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
        /v1/models)."""
        with user_errors():
            from pydantic import ValidationError

            from poise.config import dashed_flag, format_field_error, format_validation_error
            from poise.errors import MissingExtraError, PoiseError
            from poise.models.base import LanguageModel
            from poise.serve.schema import ServeConfig

            if api_key == "":
                # "--api-key $KEY" with KEY unset: serving with no key would be silent about it
                raise PoiseError(
                    "poise serve: --api-key is empty; give the key, or leave the flag out to "
                    "serve without one"
                )
            from poise.cli.audit import parse_options

            try:
                config = ServeConfig(
                    model=model,
                    model_options=parse_options(model_option, "--model-option"),
                    host=host,
                    port=port,
                    max_batch=max_batch,
                    join_rows=join_rows,
                    join_wait_ms=join_wait_ms,
                    batch_window_ms=batch_window_ms,
                    max_tokens_limit=max_tokens_limit,
                    max_n=max_n,
                    served_name=served_name,
                    api_key=api_key,
                    max_body_bytes=max_body_bytes,
                    firewall=firewall,
                    firewall_role=firewall_role,
                )
            except ValidationError as exc:
                # the flag and the value given, as the audit's and train's errors name them;
                # never the API key's value
                secret = exc.errors()[0]["loc"][:1] == ("api_key",)
                error = (
                    format_validation_error(exc) if secret else format_field_error(exc, dashed_flag)
                )
                raise PoiseError(f"poise serve: {error}") from None
            try:
                from poise.serve.app import check_firewall, check_port, load_served_model, serve
            except ImportError as exc:
                raise MissingExtraError(exc.name or "fastapi", "serve", "poise serve") from None

            check_port(config.host, config.port)  # before spending time on loading the model
            fitted = check_firewall(config)  # likewise: a wrong --firewall flag, at once

            # a folder with brackets is text, not markup (MarkupError on a terminal)
            with console.status(f"loading {shown(config.model)} ..."):
                # a base model (no chat template) too: it serves /v1/completions
                loaded = load_served_model(config.model, **config.model_options)

            def ready(served: LanguageModel) -> None:
                keyed = "API key required" if config.api_key else "no API key"
                # an IPv6 address goes in brackets in a URL (RFC 3986): http://[::1]:8000/v1
                host = f"[{config.host}]" if ":" in config.host else config.host
                console.print(
                    f"serving [bold]{shown(served.name)}[/] as [bold]{shown(config.name)}[/] on "
                    f"http://{host}:{config.port}/v1 ({keyed}; Ctrl-C to stop)",
                    highlight=False,
                    soft_wrap=True,
                )

            if serve(config, model=loaded, firewall=fitted, on_ready=ready):
                # Every request has been answered, but the model is still in a call nothing can
                # interrupt (a remote model's request, a strategy's generate): the interpreter
                # would wait for its thread at exit, minutes for a slow upstream, and a second
                # Ctrl-C would not end the wait. Exit now; a remote server sees its client leave.
                console.print("stopped (not waiting for the model's call in progress)")
                _exit_now()


def _exit_now() -> None:
    """Exit with status 0 at once, without joining the worker threads (output flushed)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
