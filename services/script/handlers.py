"""Script generation: a narration script sized to the requested duration."""

from __future__ import annotations

from typing import Any

from pybreaker import CircuitBreaker

from services.script.providers import ScriptWriter
from vividly.events import WorkItem
from vividly.runtime.stage import StageContext

WORDS_PER_MINUTE = 150


def build_prompt(item: WorkItem, grade: str, chunks: list[dict[str, Any]]) -> str:
    spec = item.request
    words = spec.duration_minutes * WORDS_PER_MINUTE
    context = "\n\n".join(
        f"[{c.get('title', '')} — {c.get('source', '')}]\n{c.get('text', '')}" for c in chunks
    )
    return (
        "You write narration scripts for short educational videos.\n"
        f"Topic: {spec.topic}\n"
        f"Learning objective: {spec.learning_objective}\n"
        f"Grade level: {grade}\n"
        f"Target length: {words} words (about {spec.duration_minutes} minutes spoken)\n"
        "Use only facts from the context; keep sentences short and concrete for the grade.\n"
        f"Context:\n{context}\n"
    )


class ScriptGeneration:
    def __init__(self, writer: ScriptWriter, breaker: CircuitBreaker) -> None:
        self.writer = writer
        self.breaker = breaker  # Gemini's: its Stage pauses input while it is open

    async def __call__(self, item: WorkItem, ctx: StageContext) -> dict[str, Any]:
        grade = ctx.output_of("validation").get("grade_level", item.request.grade_level)
        chunks = ctx.output_of("rag_retrieval").get("chunks", [])
        prompt = build_prompt(item, grade, chunks)
        ctx.log(
            "api_call",
            "Calling Gemini API for script generation",
            data={"model": self.writer.model},
        )
        headers = ctx.headers()
        script = await ctx.guarded(self.breaker, lambda: self.writer.write(prompt, headers))
        words = len(script.split())
        ctx.log("script_generated", f"Generated {words} word script")
        return {
            "script": script,
            "script_length": len(script),
            "word_count": words,
            "target_words": item.request.duration_minutes * WORDS_PER_MINUTE,
        }
