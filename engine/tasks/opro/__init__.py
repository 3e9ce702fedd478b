"""Prompt optimisation (OPRO) of a frozen model: `python -m engine opro ...`.

The scored model (a training run's adapter, or the base model) never changes. Each candidate
instruction is scored by logit scoring on a development set; the objective is balanced
accuracy, ties broken by the mean log-probability of the correct class (the ranking rule,
engine/runs/opro_history.py). New candidates come from a proposer (proposers.py):

- `EditSearch` (no model, the default): deterministic edits of the best prompts so far
  (paraphrase the question or the answer clause, reorder sentences, add or remove a constraint);
- `ModelProposer`: a causal LM (any local Hugging Face folder or cached hub id, or the audio
  model's own language model in text-only mode) fed an OPRO meta-prompt listing the best
  prompts with their scores, as in Yang et al., "Large Language Models as Optimizers" (2023).

Every candidate passes `sanitise_prompt` (the answer words stay exactly the label words; length
bounded; one line) and duplicates are dropped. The search loop (search.py) appends the history to
the run folder as each candidate is scored, so a cancelled or crashed search keeps what it found.
Only when the search finishes is the best dev prompt evaluated, once, on the held-out test set,
next to the original prompt on the same clips. settings.py holds OproSettings, cli.py the
command. The run-folder contract is in docs/OPRO.md.

This package imports no torch at import time: the dashboard reads its constants and settings.
"""

from __future__ import annotations

from engine.runs.opro_history import best_entry, rank_key, top_entries  # noqa: F401 (the search's ranking rule)
from engine.tasks.opro.cli import opro_arguments, opro_main  # noqa: F401
from engine.tasks.opro.proposers import (  # noqa: F401
    ANSWER_CLAUSES, CONSTRAINTS, DEFAULT_MAX_PROMPT_CHARS, DEFAULT_TOP_K, EDIT_OPERATIONS, MIN_PROMPT_CHARS,
    PARENTS_FROM_TOP, PROPOSER_BUILDERS, PROPOSER_EDIT, PROPOSER_MODEL, PROPOSER_ROUNDS, PROPOSER_SELF, PROPOSERS,
    QUESTIONS, Candidate, EditSearch, ModelProposer, answer_clause, apply_edit, extract_proposal, family_chat,
    make_proposer, meta_prompt, prompt_key, proposer_builder, proposer_kind, sampler, sanitise_prompt,
    split_sentences, tokenizer_chat)
from engine.tasks.opro.search import (  # noqa: F401
    ORIGINAL_SUFFIX, ORIGINAL_TEST_NAME, TEST_NAME, DevSet, Search, check_held_out, load_dev_set, optimise,
    peak_gpu_memory_gb, resolve_target, run_config, score_prompt)
from engine.tasks.opro.settings import OproSettings  # noqa: F401
