"""Options and small helpers every `fg-edge` command shares, so a flag means the same thing everywhere.

- ``--json FILE|-``: also write the result as JSON to FILE; ``-`` prints only the JSON on stdout.
- ``--progress/--no-progress``: progress bars; by default on only when stderr is a terminal (and not under ``-q``).
- ``--overwrite``: replace an existing output folder (outputs are written to a temp folder, then renamed).
- ``--ep-library NAME=PATH``: register a plugin execution-provider library first (runtime commands).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click


def output_file_check(option: str, role: str) -> Callable:
    """A click callback that checks an output FILE's folder before the command's work, not after it (a missing
    folder is fine: it is created, like output folders); '-' (stdout) passes."""
    def check(ctx, param, value: Optional[str]) -> Optional[str]:
        if value in (None, "-"):
            return value
        from fg_edge.errors import OutputPathError
        from fg_edge.formats.atomic import check_writable_location

        try:
            check_writable_location(Path(value).resolve().parent, value, option=option, role=role)
        except OutputPathError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
        if Path(value).is_dir():
            raise click.BadParameter(f"{value} is a folder; name a file", ctx=ctx, param=param)
        return value

    return check


def json_option(what: str = "the result") -> Callable:
    return click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                        metavar="FILE|-", callback=output_file_check("--json", "JSON file"),
                        help=f"Also write {what} as JSON to FILE ('-': print only the JSON).")


def progress_option(f: Callable) -> Callable:
    return click.option("--progress/--no-progress", default=None,
                        help="Show progress bars [default: on when stderr is a terminal].")(f)


def overwrite_option(f: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")(f)


def ep_library_option(f: Callable) -> Callable:
    return click.option("--ep-library", "ep_libraries", multiple=True, metavar="NAME=PATH",
                        help="Register a plugin execution-provider library with onnxruntime first "
                             "(onnxruntime.register_execution_provider_library); repeatable.")(f)


def engine_option(f: Callable) -> Callable:
    """--engine: who runs a decoder's generation loop (fg_edge.runtimes.genai_engine)."""
    return click.option("--engine", type=click.Choice(["ort", "genai"]), default="ort", show_default=True,
                        help="Decoders: 'ort' = fg-edge's own cached loop on ONNX Runtime; 'genai' = ONNX Runtime "
                             "GenAI (pip install 'fg-edge[genai]') runs the search from the folder's "
                             "genai_config.json.")(f)


def show_progress(flag: Optional[bool]) -> bool:
    """The effective progress setting: the user's flag, else on only for a terminal and when not quiet."""
    if flag is not None:
        return flag
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return not quiet and sys.stderr.isatty()


def emit_json(data: Any, json_path: Optional[str], sort_keys: bool = True) -> bool:
    """Write `data` for ``--json``: '-' prints it on stdout (returns True: print nothing else), a path writes the
    file (returns False). None does nothing. `sort_keys=False` keeps an order that means something (eval's rows)."""
    if json_path is None:
        return False
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=str)
    if json_path == "-":
        click.echo(text)
        return True
    from fg_edge.formats.atomic import write_text_atomic

    Path(json_path).resolve().parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json_path, text + "\n")
    click.echo(f"wrote {json_path}", err=True)
    return False


def read_train_dev(task: str, train_path: str, dev_path: Optional[str], opts: dict):
    """The --train / --dev files of `train` and `finetune` as ClassificationData / TextData (dev may be None)."""
    from fg_edge.data.readers import load_classification, load_texts

    if task == "classification":
        common = dict(text_column=opts["text_column"], label_column=opts["label_column"],
                      text_pair_column=opts["text_pair_column"], fmt=opts["data_format"], seed=opts["seed"],
                      header=not opts.get("no_header", False))
        train = load_classification(train_path, max_rows=opts["max_train"], what="--train file", **common)
        dev = None
        if dev_path is not None:
            dev = load_classification(dev_path, max_rows=opts["max_dev"], what="--dev file", reference=train, **common)
        return train, dev
    common = dict(text_column=opts["text_column"], fmt=opts["data_format"], seed=opts["seed"],
                  header=not opts.get("no_header", False))
    train = load_texts(train_path, max_blocks=opts["max_train"], what="--train file", **common)
    dev = None
    if dev_path is not None:
        dev = load_texts(dev_path, max_blocks=opts["max_dev"], what="--dev file", default_split="validation",
                         **common)
    return train, dev


def label_names_option(f: Callable) -> Callable:
    return click.option("--label-names", default=None, metavar="A,B,...",
                        help="Names of integer labels 0, 1, ... in order (e.g. negative,positive): stored as the "
                             "model's id2label, so compile / run / eval show and accept them. String labels in the "
                             "data are names already.")(f)


def label_config(train_data, label_names: Optional[str]) -> dict:
    """id2label / label2id for the model config: the data's own (string labels, or LABEL_i), or --label-names."""
    if not label_names:
        return train_data.label_config()
    names = [n.strip() for n in label_names.split(",")]
    if train_data.string_labels:
        raise click.UsageError(f"--label-names names integer labels, but the labels in {train_data.source} are "
                               f"names already ({', '.join(train_data.id2label.values())})")
    if len(names) != train_data.num_labels or not all(names) or len(set(names)) != len(names):
        raise click.UsageError(f"--label-names needs {train_data.num_labels} distinct names for labels "
                               f"0..{train_data.num_labels - 1}; got {label_names!r}")
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def no_header_option(f: Callable) -> Callable:
    return click.option("--no-header", is_flag=True,
                        help="The TSV / CSV files have no header line (AG News ships so): name the columns by "
                             "position, e.g. --text-column 1 --label-column 0.")(f)


def truncate_option(f: Callable) -> Callable:
    from fg_edge.formats.positions import TRUNCATE_CHOICES

    return click.option("--truncate", type=click.Choice(TRUNCATE_CHOICES), default="auto", show_default=True,
                        help="A text longer than the model takes: 'right' keeps the start, 'left' keeps the end, "
                             "'error' refuses; auto = right for classifiers / embedders (as in training), left for "
                             "decoder prompts (room is left for the new tokens). A cut is always reported.")(f)
