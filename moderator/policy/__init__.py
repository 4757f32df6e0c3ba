"""Restricted concepts as text prompts: load and validate YAML, compile to arrays, score, reload.

load.py     YAML → validated, resolved ConceptSpecs (errors as file:line: field: message)
compile.py  ConceptSpecs → CompiledPolicy (embeddings cached by content)
score.py    CompiledPolicy.score(embeddings, surfaces) → Outcome per image
reload.py   PolicyReloader: poll, recompile, swap `current`
cli.py      `moderator policy validate|explain|test|diff`
tokens.py   prompt token counts without an Encoder: the shipped CLIP tokenizer, or a model's
yamllines.py  YAML → plain data with line numbers, aliases and nesting bounded
"""

from __future__ import annotations

from moderator.cache.keys import EmbeddingCache
from moderator.cache.memory import MemoryEmbeddingCache
from moderator.policy.compile import compile_policy
from moderator.policy.load import ConceptSpec, PolicySet, load_policies
from moderator.policy.reload import PolicyReloader
from moderator.policy.schema import Action, Mode, Scoring, Severity
from moderator.policy.score import CompiledPolicy, ConceptScore, Outcome, Status

__all__ = [
    "Action",
    "CompiledPolicy",
    "ConceptScore",
    "ConceptSpec",
    "EmbeddingCache",
    "MemoryEmbeddingCache",
    "Mode",
    "Outcome",
    "PolicyReloader",
    "PolicySet",
    "Scoring",
    "Severity",
    "Status",
    "compile_policy",
    "load_policies",
]
