"""Publishing a model to the Hugging Face Hub: one commit with timm's repo layout.

A repo holds ``model.safetensors``, ``config.json``, ``README.md`` (the model card), the run's
metrics/curves/evaluation and ONNX reports, and optionally ``model.onnx``. Everything is checked
before the first request (the weights load into the named architecture), and the client's errors
come back through ``hub._translate`` as one-line messages. Kept apart from ``hub.py`` (fetching)
so imports go one way: registry <- model <- weights <- hub <- pretrained <- summary <- cards <- publish.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING

from .cards import GENERATED, hand_edited_card, write_folder
from .files import (MODEL_SUFFIXES, ONNX_FILENAME, REPORT_SUFFIX, RUN_FILES, RUNTIMES_FILENAME,
                    WEIGHTS_FILENAME)
from .filesets import HIDDEN_PATTERNS
from .hub import (HubError, HubUnavailableError, _token_source, _translate, check_repo_id, check_revision,
                  endpoint, reachable, resolve_token)
from .pretrained import MODEL_CARDS_DIR, load, published_weights
from .weights import WeightsError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

# What a push writes, or what describes some weights: such a file left by an earlier push beside new weights would
# be downloaded as theirs, so the commit deletes it. Anything else in the repo (your notes, data) is kept.
# Top-level names only (a push writes no subfolder; a Core ML package is one): a user's data/x.xml is not a model file.
PUSHED_PATTERNS = (*GENERATED, WEIGHTS_FILENAME, *RUN_FILES, RUNTIMES_FILENAME, "*" + REPORT_SUFFIX,
                   *("*" + suffix for suffix in MODEL_SUFFIXES), "*.onnx.data", "*.bin")


def _pushed_kind(path: str) -> bool:
    """``path`` (in the repo) is a file a push writes or one that describes weights (see PUSHED_PATTERNS)."""
    top, _, rest = path.partition("/")
    if rest:
        return top.endswith(".mlpackage")
    return any(fnmatch(top, pattern) for pattern in PUSHED_PATTERNS)



@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    changed: bool  # False when the repo already held exactly these files (no commit was made)
    removed: tuple[str, ...] = ()  # files of the branch's previous commit that this set does not bring (deleted)
    kept: tuple[str, ...] = ()  # files of the previous commit that no push writes (the user's own): left as they are
    own_readme: Path | None = None  # a hand-edited README.md beside the weights: not pushed (the card is generated)


def stage(name: str, weights: str | os.PathLike[str], dest: Path, *, with_onnx: bool = False,
          cards_dir: Path | None = None) -> Path:
    """The repo's files in ``dest``, laid out by the one folder writer (``cards.write_folder``)."""
    weights = Path(weights)
    if not weights.is_file():
        raise HubError(f"nothing to push: {weights} does not exist; train {name} or pass --weights PATH")
    from .card_facts import check_card_metadata
    from .weights import decode_metadata, read_metadata

    check_card_metadata(decode_metadata(read_metadata(weights)), weights)  # named as the user gave it, not its copy
    onnx = _find_onnx(name, weights, cards_dir or MODEL_CARDS_DIR) if with_onnx else None
    return write_folder(name, dest, weights, onnx=onnx)


def _find_onnx(name: str, weights: Path, cards_dir: Path) -> Path:
    """An already exported ``model.onnx`` (or ``<name>.onnx``) beside the weights or in ``model_cards/<name>/``.

    Found by name only to be checked by content: ``write_folder`` refuses one that was not exported
    from these weights, or whose report judged other bytes (``provenance``)."""
    candidates = list(dict.fromkeys([weights.parent / ONNX_FILENAME, weights.with_suffix(".onnx"),
                                     weights.parent / f"{name}.onnx", cards_dir / name / ONNX_FILENAME]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HubError(
        f"--with-onnx: no exported ONNX model for {name} (looked at "
        f"{', '.join(str(c) for c in candidates)}); export it first with `aperture export {name}` "
        "next to the weights"
    )


def _check_weights(name: str, weights: Path) -> None:
    """Refuse, before anything is uploaded, a file that ``load(name)`` could not use.

    The same checks as loading (safetensors only, architecture, every key and shape), so a
    missing, corrupt, pickled or other-model file is named by the path the user gave.
    """
    if not weights.is_file():
        raise HubError(f"nothing to push: {weights} does not exist; train {name} or pass --weights PATH")
    try:  # as `load(name, weights=...)` reads it: a run on your own images keeps its head and class names
        load(name, weights=weights)
    except WeightsError as exc:
        raise HubError(f"not pushing {name}: {exc}") from None


def _ensure_repo(api: "HfApi", repo_id: str, private: bool) -> None:
    """Create ``repo_id`` unless it exists already.

    Looking first (instead of ``create_repo(exist_ok=True)`` alone) means that a repo in someone
    else's namespace fails at the upload with a plain 403, rather than inside the client's
    create-then-recover path, which cannot parse repo URLs of a custom ``HF_ENDPOINT``.
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        api.repo_info(repo_id)
    except RepositoryNotFoundError:
        api.create_repo(repo_id, private=private, exist_ok=True)


def push(
    name: str,
    repo_id: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    with_onnx: bool = False,
    commit_message: str | None = None,
    cards_dir: Path | None = None,
) -> PushResult:
    """Create the repo if needed and upload weights + card + config in one commit, which also deletes the
    branch's files that this set does not bring (named in ``removed``).

    Pushing identical files again makes no commit (the client skips unchanged files) and returns
    the existing head with ``changed=False``. ``cards_dir`` is where the published weights and
    ONNX files are looked for (default: the checkout's ``model_cards/``).
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
        if re.fullmatch(r"[0-9a-fA-F]{40}", revision):
            raise HubError(f"--revision {revision} looks like a commit id: a branch of that name would shadow the commit "
                           "for anyone who downloads @" + revision[:12] + "...; push to a branch name (e.g. --revision v2)")
    weights_path = Path(weights) if weights is not None else published_weights(name, cards_dir)
    if weights_path is None:
        raise HubError(
            f"nothing to push for {name}: without --weights only the zoo's published weights are pushed, "
            f"and model_cards/{name}/ holds no file matching their SHA-256 pin; pass your own with "
            "--weights runs/.../model.safetensors"
        )
    _check_weights(name, weights_path)
    tok = resolve_token(token)
    url = endpoint()
    branch = revision or "main"
    api = HfApi(endpoint=url, token=tok)
    with tempfile.TemporaryDirectory(prefix="aperture-push-") as tmp:
        folder = stage(name, weights_path, Path(tmp) / name, with_onnx=with_onnx, cards_dir=cards_dir)
        if not reachable(url):
            raise HubUnavailableError(
                f"cannot reach the Hub at {url} to push {repo_id}; check the network or HF_ENDPOINT"
            )
        with _translate(repo_id, "push to", url, branch, _token_source(token, "--token")):
            _ensure_repo(api, repo_id, private)
            if branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            before = api.repo_info(repo_id, revision=branch)
            # the commit holds this file set and nothing else: an earlier push's model.onnx, report or log
            # left beside other weights would be downloaded as theirs (.gitattributes is kept by the client)
            others = sorted({f.rfilename for f in before.siblings or []} - _relative_files(folder) - {".gitattributes"})
            removed = [f for f in others if _pushed_kind(f)]
            info = api.upload_folder(  # exactly those deleted (escaped: the client matches patterns across "/")
                repo_id=repo_id, folder_path=folder, revision=branch, ignore_patterns=list(HIDDEN_PATTERNS),
                delete_patterns=[glob.escape(f) for f in removed] or None,
                commit_message=commit_message or f"Upload {name} (aperture_zoo)",
            )
    log.info("pushed %s to %s: %s", name, repo_id, info.commit_url)
    edited = weights_path.parent / "README.md"
    return PushResult(repo_id, branch, info.oid, info.commit_url, changed=info.oid != before.sha,
                      removed=tuple(removed), kept=tuple(f for f in others if f not in removed), own_readme=edited if hand_edited_card(weights_path.parent) else None)


def _relative_files(folder: Path) -> set[str]:
    """What ``upload_folder`` uploads from ``folder`` (its hidden lock and stage files left out)."""
    def hidden(p: Path) -> bool:
        return any(fnmatch(part, pat) for part in p.relative_to(folder).parts for pat in HIDDEN_PATTERNS)

    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not hidden(p)}
