"""Load a refining model's tokenizer as the Rust `tokenizers` object plus its chat settings.

The chunker and prompt builder use the Rust tokenizer directly: it batches across threads and
it is exactly what the reference's fast tokenizer ran (`tokenizer.json` as published), whereas
newer `transformers` releases rebuild Llama tokenizers and split text around special tokens
differently. A folder or a Hugging Face Hub id is accepted; the Hub is only asked when the name
is not a local folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

if TYPE_CHECKING:
    from proxkit.linecount import WordTokens

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


class TokenizerNotFound(RuntimeError):
    """The tokenizer could not be found locally nor fetched."""


@dataclass(frozen=True, eq=False)
class TokenizerInfo:
    """A tokenizer and the settings prompts need from its config."""

    backend: Tokenizer
    name: str
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None

    @cached_property
    def words(self) -> WordTokens:
        """Word-by-word ids and counts, cached (`linecount.WordTokens`): built on first use and
        shared by everything that tokenizes with this tokenizer."""
        from proxkit.linecount import WordTokens

        return WordTokens(self.backend)

    def fingerprint(self) -> str:
        """Identifies the vocabulary, merges, special tokens and chat format: two tokenizers
        with one fingerprint turn the same prompt into the same ids."""
        parts = (self.backend.to_str(), self.bos_token, self.eos_token, self.chat_template)
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _token_text(value: object) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, config: dict) -> str | None:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(folder / "chat_template.json").get(
        "chat_template"
    )
    if isinstance(template, list):  # named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def resolve_folder(name_or_path: str) -> Path:
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise TokenizerNotFound(
            f"tokenizer {name_or_path!r}: not a folder and not a Hugging Face Hub id (owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as exc:
        raise TokenizerNotFound(
            f"could not fetch tokenizer {name_or_path!r} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}). Offline, pass a local folder that holds tokenizer.json, for example the "
            "Llama-2 tokenizer of the released refining models."
        ) from exc


def load_tokenizer(name_or_path: str) -> TokenizerInfo:
    """Load from a local folder (tokenizer.json + tokenizer_config.json) or a Hub id."""
    folder = resolve_folder(name_or_path)
    config = _read_json(folder / "tokenizer_config.json")
    special = _read_json(folder / "special_tokens_map.json")
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        backend = Tokenizer.from_file(str(tokenizer_file))
    else:
        backend = _backend_from_transformers(folder)
    return TokenizerInfo(
        backend=backend,
        name=name_or_path,
        bos_token=_token_text(config.get("bos_token")) or _token_text(special.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")) or _token_text(special.get("eos_token")),
        chat_template=_chat_template(folder, config),
    )


def _backend_from_transformers(folder: Path) -> Tokenizer:
    """Folders with only a sentencepiece model: let transformers convert it to a fast tokenizer."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise TokenizerNotFound(
            f"{folder} has no tokenizer.json; converting it needs transformers "
            "(pip install 'proxkit[transformers]')"
        ) from exc
    fast = AutoTokenizer.from_pretrained(str(folder))
    backend = getattr(fast, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerNotFound(f"{folder}: transformers could not build a fast tokenizer")
    return backend
