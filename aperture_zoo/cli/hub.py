"""`aperture card` (write a model card) and `aperture push` (publish to the Hugging Face Hub)."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from aperture_zoo.files import CURVES_FILENAME

from .common import MODEL_HELP, WEIGHTS_HELP, console, err_console, safe, user_errors, weights_file_for_command


@app.command("card")
def card_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    run: Path | None = typer.Option(None, "--run", help="Training run folder (model.safetensors, eval.json, ...)."),
    weights: str | None = typer.Option(None, "--weights", help=WEIGHTS_HELP + " Described instead of a run."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: model_cards/<name>)."),
) -> None:
    """Write README.md (model card) and config.json; with --run, copy the run's weights and outputs too."""
    from aperture_zoo.cards import write_card
    from aperture_zoo.pretrained import MODEL_CARDS_DIR

    with user_errors():
        arch, file = weights_file_for_command(name, weights)
        folder = write_card(arch, out or MODEL_CARDS_DIR / arch, weights=file, run_dir=run)
    console.print(f"wrote {safe(folder / 'README.md')} and {safe(folder / 'config.json')}", highlight=False,
                  soft_wrap=True)
    if run is not None and not (run / CURVES_FILENAME).is_file():  # a run killed between its weights and curves
        from .hints import resume_command

        err_console.print(safe(f"note: {run} has no {CURVES_FILENAME}, so neither has the card's folder; "
                               f"`{resume_command(run)}` draws it from the run's metrics.jsonl, then write the card "
                               "again"), highlight=False, soft_wrap=True)


@app.command("push")
def push_cmd(
    name: str = typer.Argument(..., help=MODEL_HELP),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub repo, ORG/NAME (created if missing)."),
    weights: str | None = typer.Option(
        None, "--weights", help=WEIGHTS_HELP + " Published (default: the zoo's published weights of NAME)."),
    token: str | None = typer.Option(
        None, "--token", help="Hub token with write access (default: HF_TOKEN, then `hf auth login`).",
        show_default=False),
    private: bool = typer.Option(False, "--private", help="Create the repo as private."),
    revision: str | None = typer.Option(None, "--revision", help="Branch to commit to (created if missing)."),
    with_onnx: bool = typer.Option(False, "--with-onnx", help="Also upload an exported model.onnx (+ its report)."),
) -> None:
    """Upload weights, config.json and the model card to the Hub in one commit; prints the commit URL."""
    from aperture_zoo.publish import push

    with user_errors():
        arch, file = weights_file_for_command(name, weights)
        result = push(arch, repo_id, weights=file, token=token, private=private,
                      revision=revision, with_onnx=with_onnx)
    if result.own_readme is not None:
        err_console.print(f"note: {safe(str(result.own_readme))} is not the card aperture generates (edited by hand?): "
                          "the Hub got the generated card, not your text; add your notes to the repo's README "
                          "yourself", highlight=False, soft_wrap=True)
    if result.removed:
        console.print(f"removed {len(result.removed)} file(s) an earlier push left that this one does not bring "
                      f"(they described other weights or files): {safe(', '.join(result.removed))}",
                      highlight=False, soft_wrap=True)
    if result.kept:
        console.print(f"kept {len(result.kept)} file(s) of the repo that aperture does not write: "
                      f"{safe(', '.join(result.kept))}", highlight=False, soft_wrap=True)
    if not result.changed:
        console.print(f"{safe(result.repo_id)}@{safe(result.revision)} already holds these files; no new commit.",
                      highlight=False)
    console.print(safe(result.commit_url), highlight=False, soft_wrap=True)
