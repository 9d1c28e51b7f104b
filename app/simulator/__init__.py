"""Simulated Azure OpenAI / Foundry resource: a lean pure-ASGI app for tests, benchmarks and demos.

One `Simulator` is one Azure resource: its endpoint, api keys and deployments, served with
Azure's status codes, error bodies, headers and streaming shapes, plus injectable faults and
admin routes under ``/_sim/`` (``GET stats|requests|faults``, ``POST reset|faults|revoke``).
Run one with ``python -m app.simulator --port N``.

Layout (one file per operation, shared pieces beside them):

* ``server.py``   -- the ASGI app, the ``/_sim/`` control API, and the pipeline every
  operation shares: route -> key (401) -> deployment (404) -> JSON body and ``model`` ->
  early fault -> the operation's handler. ``OPERATIONS`` lists the operations served.
* ``operation.py`` -- the contract an operation fulfils: `Operation` (Azure's name, a pure
  ``route`` function, a ``handle`` coroutine), `Target` (what a path names), `Call`.
* ``resource.py`` -- `SimConfig`, `Stats` and the resource's mutable state (faults, keys,
  recorded requests): everything the control API reads or resets.
* ``faults.py``   -- `Fault`, its JSON form, and the modes applied before an answer;
  ``hostile.py`` -- those of an upstream misbehaving on purpose (closes after reading,
  echoes the api-key, redirects, huge or dripping bodies, huge headers or SSE lines).
* ``auth.py``     -- which api keys are accepted (and revoked).
* ``errors.py``   -- Azure's error bodies; ``asgi.py`` -- body reading and `Reply`, the one
  writer of HTTP responses; ``models.py`` -- reasoning-model rules and reply text helpers.
* ``chat.py``     -- chat completions (v1 and legacy deployment routes).
* ``responses.py`` -- the Responses API: create (plain, streamed, background), retrieve,
  delete, input_items, cancel, resumed streams; ``responses_wire.py`` -- its request checks,
  ``response`` object and event sequence; ``store.py`` -- responses stored per resource.
* ``embeddings.py`` -- embeddings: deterministic vectors, float or base64.
* ``images.py``   -- image generations (JSON) and edits (multipart): real PNGs, gpt-image usage.
* ``transcription.py`` -- audio transcriptions and translations (multipart): a fixed transcript
  in every response format, ``stream=true`` transcript events for gpt-4o-transcribe.
* ``speech.py``   -- text to speech: a short real WAV sent in pieces, or ``speech.audio.*`` SSE.
* ``forms.py``    -- multipart bodies read with python-multipart; ``sound.py`` -- WAV bytes and
  the length of an uploaded clip.
* ``cli.py``      -- ``python -m app.simulator``.

Adding an operation: write ``app/simulator/<operation>.py`` with a
``route(method, path, query) -> Target | None`` (``operation.deployment_route`` builds the
usual v1 + legacy one), an ``async handle(call) -> status | None``
and ``OPERATION = Operation(name=<Azure operation name>, route=..., handle=...)`` (with
``deployment_of`` if some routes name a stored object rather than a deployment); add it to
``server.OPERATIONS``; test it in ``tests/simulator/test_<operation>.py``. Auth, deployment
checks, counters, recording and the early faults (429, 500, content_filter, hang, slow, and
the misbehaving upstream of ``hostile.py``) then apply to it unchanged; answer-shaping
faults (``drop``, ``annotations``) are the handler's.
A new fault mode goes in ``faults.py`` (``FAULT_MODES`` and `early_fault`, or the handlers
that shape it); a new kind of upstream credential goes beside ``auth.py``.
"""

from app.simulator.chat import (
    compute_answer,
    count_prompt_tokens,
    message_text,
    validate_request,
)
from app.simulator.cli import main, parse_args, quiet_drop_logs, run
from app.simulator.faults import FAULT_MODES, Fault, fault_from_json
from app.simulator.models import REASONING_TOKENS, is_reasoning, model_version, split_pieces
from app.simulator.resource import RECORDED_REQUESTS, SimConfig, Stats
from app.simulator.server import Simulator

__all__ = [
    "FAULT_MODES",
    "REASONING_TOKENS",
    "RECORDED_REQUESTS",
    "Fault",
    "SimConfig",
    "Simulator",
    "Stats",
    "compute_answer",
    "count_prompt_tokens",
    "fault_from_json",
    "is_reasoning",
    "main",
    "message_text",
    "model_version",
    "parse_args",
    "quiet_drop_logs",
    "run",
    "split_pieces",
    "validate_request",
]
