"""Throughput benchmarks on this machine: ``python -m cai_bootstrap.bench [--only critic]``.

Each benchmark is one function in ``BENCHES`` that takes the parsed arguments and returns
a JSON-able dict; ``main`` runs the selected ones, prints a summary and writes
``<out>/<name>.json``. Benchmarks compare two ways of doing the same work on the same
inputs in the same process, so the ratio is meaningful even on a noisy machine, and
they also check that the fast way gives the same answers.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from cai_bootstrap.io_utils import atomic_write_json

DEFAULT_OUT = Path("artifacts") / "bench"
CRITIC_TARGET_SPEEDUP = 8.0

# Answer fragments for synthetic pair-critic items; only their length and variety matter.
_ANSWER_SENTENCES = (
    "The answer is 42.",
    "Paris is the capital of France.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Red, green and blue.",
    "Bonjour means hello in French.",
    "A haiku has three lines of five, seven and five syllables.",
    "The mitochondria produce most of the energy a cell uses.",
    "Sorted: 2, 4, 7, 9.",
    '{"name": "Ada", "age": 36}',
    "Cats are independent, while dogs usually need more attention.",
)


def _environment() -> dict:
    import torch
    import transformers

    from cai_bootstrap.provenance import git_info

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "git": git_info(),
    }


def _tiny_lm(model_dir: str | None, device: str = "cpu", dtype: str | None = None):
    from cai_bootstrap.loader import load_base_model
    from cai_bootstrap.testmodel import build_tiny_model

    if model_dir is None:
        from platformdirs import user_cache_dir

        model_dir = str(Path(user_cache_dir("cai-bootstrap")) / "bench" / "tiny-random-seed0")
    try:
        path = build_tiny_model(model_dir, seed=0)
    except OSError:
        path = build_tiny_model(Path(tempfile.mkdtemp(prefix="cai-bench-")) / "tiny-random", seed=0)
    return load_base_model(path, device=device, dtype=dtype)


# -- critic ---------------------------------------------------------------------------------


def critic_bench_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Pair-critic items of realistic size: a pool instruction and a one- to three-sentence answer."""
    from cai_bootstrap.prompts import instruction_pool

    rng = random.Random(seed)
    pool = instruction_pool()
    items = []
    for k in range(n):
        instruction = pool[k % len(pool)].text
        answer = " ".join(rng.sample(_ANSWER_SENTENCES, rng.randint(1, 3)))
        items.append((instruction, answer))
    return items


def run_critic_bench(lm, *, n_items: int = 64, batch_size: int = 16, repeats: int = 3, seed: int = 0) -> dict:
    """Items/sec of batched scoring with prefix reuse against one-at-a-time, and their agreement.

    Runs are interleaved (slow, fast, slow, fast, ...) so background load hits both alike;
    the speedup is the ratio of median times.
    """
    from cai_bootstrap.critic import Critic, decide
    from cai_bootstrap.prompts import pair_critic_template

    if n_items < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("n_items, batch_size and repeats must be positive")
    template = pair_critic_template()
    items = critic_bench_items(n_items, seed)
    one = Critic(lm, template, batch_size=1, prefix_reuse=False)
    fast = Critic(lm, template, batch_size=batch_size, prefix_reuse=True)
    warm = items[: min(4, n_items)]
    one.score(warm)
    fast.score(warm)

    times: dict[str, list[float]] = {"one": [], "fast": []}
    cpu: dict[str, list[float]] = {"one": [], "fast": []}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, critic in (("one", one), ("fast", fast)):
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = critic.score(items)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    ref, got = results["one"], results["fast"]
    margin_diff = max(abs(a.margin - b.margin) for a, b in zip(ref, got))
    logp_diff = max(max(abs(a.logp_a - b.logp_a), abs(a.logp_b - b.logp_b)) for a, b in zip(ref, got))
    same = sum((a.predicted_label, a.confident, a.is_good) == (b.predicted_label, b.confident, b.is_good) for a, b in zip(ref, got))
    # A random test model is never confident at the default threshold; agreement on the label
    # alone (threshold 0) is the informative check there.
    same_label = sum(
        decide(a.logp_a, a.logp_b, threshold=0.0).predicted_label == decide(b.logp_a, b.logp_b, threshold=0.0).predicted_label
        for a, b in zip(ref, got)
    )
    prefix_tokens = len(lm.encode(template.prefix))
    item_tokens = [len(lm.encode(one.render(i))) - prefix_tokens for i in items]
    t_one, t_fast = statistics.median(times["one"]), statistics.median(times["fast"])
    speedup = t_one / t_fast
    return {
        "bench": "critic",
        "device": lm.provenance.get("device"),
        "dtype": lm.provenance.get("dtype"),
        "model": lm.provenance.get("model_name"),
        "template": template.name,
        "n_items": n_items,
        "repeats": repeats,
        "prefix_tokens": prefix_tokens,
        "item_tokens": {"min": min(item_tokens), "median": statistics.median(item_tokens), "max": max(item_tokens)},
        "one_at_a_time": {
            "batch_size": 1,
            "prefix_reuse": False,
            "seconds": times["one"],
            "cpu_seconds": cpu["one"],
            "items_per_sec": n_items / t_one,
        },
        "batched": {
            "batch_size": batch_size,
            "prefix_reuse": True,
            "seconds": times["fast"],
            "cpu_seconds": cpu["fast"],
            "items_per_sec": n_items / t_fast,
            "provenance": fast.provenance,
        },
        "speedup": speedup,
        "speedup_best_of": min(times["one"]) / min(times["fast"]),
        # CPU time of this process: less sensitive to other load on a shared machine.
        "speedup_cpu_time": statistics.median(cpu["one"]) / statistics.median(cpu["fast"]),
        "target_speedup": CRITIC_TARGET_SPEEDUP,
        "meets_target": speedup >= CRITIC_TARGET_SPEEDUP,
        "max_abs_margin_diff": margin_diff,
        "max_abs_logp_diff": logp_diff,
        "decision_agreement": same / n_items,
        "label_agreement_threshold_0": same_label / n_items,
        "environment": _environment(),
    }


def bench_critic(args: argparse.Namespace) -> dict:
    lm = _tiny_lm(args.model_dir, args.device, args.dtype)
    try:
        return run_critic_bench(lm, n_items=args.items, batch_size=args.batch_size, repeats=args.repeats, seed=args.seed)
    finally:
        lm.release()


def _print_critic(r: dict) -> None:
    print(
        f"critic on {r['device']}: {r['n_items']} items, prefix {r['prefix_tokens']} tokens, items {r['item_tokens']['min']}-"
        f"{r['item_tokens']['max']} tokens\n"
        f"  one at a time          {r['one_at_a_time']['items_per_sec']:9.1f} items/s\n"
        f"  batched + prefix reuse {r['batched']['items_per_sec']:9.1f} items/s (batch {r['batched']['batch_size']})\n"
        f"  speedup {r['speedup']:.1f}x wall clock, {r['speedup_cpu_time']:.1f}x CPU time "
        f"(target {r['target_speedup']:.0f}x: {'met' if r['meets_target'] else 'NOT met'})\n"
        f"  max |margin diff| {r['max_abs_margin_diff']:.2e}, decision agreement {r['decision_agreement']:.1%}, "
        f"label agreement at threshold 0 {r['label_agreement_threshold_0']:.1%}"
    )


GENERATION_TARGET_SPEEDUP = 4.0


def run_generation_bench(lm, *, n_prompts: int, batch_size: int, max_new_tokens: int, repeats: int = 1) -> dict:
    """Response tokens/s, batched (left padding) vs one prompt at a time: same prompts, same run.

    Greedy decoding, so both ways must produce the same tokens (checked), and the
    comparison is of the same work. Rows that stop early still occupy their batch slot,
    so only generated tokens are counted.
    """
    from cai_bootstrap.evaluation.evalset import load_eval_set
    from cai_bootstrap.prompts import render_response_prompt

    prompts = [render_response_prompt(x["instruction"]) for x in load_eval_set(limit=n_prompts)]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, progress=False)
    times: dict[str, list[float]] = {"one": [], "batched": []}
    outs: dict[str, list] = {}
    for _ in range(repeats):
        for name, bs in (("one", 1), ("batched", batch_size)):
            t = time.perf_counter()
            outs[name] = lm.generate(prompts, batch_size=bs, **kw)
            times[name].append(time.perf_counter() - t)
    tokens = {k: sum(g.n_tokens for g in v) for k, v in outs.items()}
    rate = {k: tokens[k] / statistics.median(times[k]) for k in times}
    same = sum(a.token_ids == b.token_ids for a, b in zip(outs["one"], outs["batched"]))
    speedup = rate["batched"] / rate["one"]
    return {
        "device": str(lm.device), "n_prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        "one_at_a_time": {"seconds": times["one"], "tokens": tokens["one"], "tokens_per_sec": rate["one"]},
        "batched": {"seconds": times["batched"], "tokens": tokens["batched"], "tokens_per_sec": rate["batched"]},
        "speedup": speedup, "target_speedup": GENERATION_TARGET_SPEEDUP, "meets_target": speedup >= GENERATION_TARGET_SPEEDUP,
        "identical_outputs": same / len(prompts), "model": lm.provenance.get("model_name"),
        "environment": _environment(),
    }


def bench_generation(args: argparse.Namespace) -> dict:
    if args.gen_model:
        from cai_bootstrap.loader import load_base_model
        from cai_bootstrap.model_sources import resolve_model

        r = resolve_model(args.gen_model)
        lm = load_base_model(r.source, profile=r.profile, device=args.device, dtype=args.dtype, run_sentinels=False)
    else:
        lm = _tiny_lm(args.model_dir, args.device, args.dtype)
    try:
        return run_generation_bench(lm, n_prompts=args.gen_prompts, batch_size=args.gen_batch_size,
                                    max_new_tokens=args.gen_max_new_tokens, repeats=1)
    finally:
        lm.release()


def _print_generation(r: dict) -> None:
    print(
        f"generation on {r['device']} ({r['model']}): {r['n_prompts']} prompts, greedy, {r['max_new_tokens']} new tokens max\n"
        f"  one at a time  {r['one_at_a_time']['tokens_per_sec']:9.1f} tokens/s\n"
        f"  batched        {r['batched']['tokens_per_sec']:9.1f} tokens/s (batch {r['batch_size']}, left padding)\n"
        f"  speedup {r['speedup']:.1f}x (target {r['target_speedup']:.0f}x: {'met' if r['meets_target'] else 'NOT met'}), "
        f"identical outputs {r['identical_outputs']:.0%}"
    )


def bench_training(args: argparse.Namespace) -> dict:
    from cai_bootstrap.bench_train import bench_training as run

    return run(args.train_model, steps=args.train_steps, seq_len=args.train_seq_len, batch=2,
               modes=("lora", "qlora") if args.device.startswith("cuda") else ("lora",))


def _print_training(r: dict) -> None:
    for row in r.get("results", []):
        print(f"training {row.get('mode')}: {row.get('tokens_per_second')} tokens/s, peak GPU memory "
              f"{row.get('peak_gpu_memory_gb')} GB, {row.get('seconds_per_step')} s/step")


# -- dedup ----------------------------------------------------------------------------------

DEDUP_BENCH_N = 50_000
# The pairwise reference is quadratic (4,000 instructions took 14 to 52 s on 2 shared cores); it is
# timed on this many, beside the index on the same instructions.
DEDUP_BENCH_PAIRWISE_N = 4_000
DEDUP_TARGET_SECONDS = 60.0
DEDUP_NEAR_SHARE = 0.1

# A task is a verb, an object and zero to two extras; with the openers, constraints and
# contexts that gives millions of phrasings, as a generator's output has.
_VERBS = ("write", "compose", "draft", "create", "describe", "explain", "summarize", "outline", "design", "plan",
          "invent", "rewrite", "critique", "analyze", "review", "edit", "simplify", "expand", "paraphrase",
          "illustrate", "sketch", "recommend", "brainstorm ideas for", "imagine", "argue for", "argue against",
          "evaluate", "rank the parts of", "translate", "classify", "continue", "improve", "shorten", "praise",
          "make fun of", "defend", "question", "compare two versions of", "list the steps of", "find flaws in")
_PREPS = ("about", "on", "regarding", "for", "involving", "inspired by", "featuring", "against", "with", "without",
          "around", "explaining", "celebrating", "mocking", "questioning", "comparing")
_EXTRAS = (" for {audience}", " in {num} sentences", " set in {place}", " that mentions {topic2}",
           " using the word '{word}'", " without mentioning {topic2}", " from the view of a {role}",
           " in the style of a {role}", " with a {adj2} ending", " in under {num} words", " for a {role} in {place}",
           " as if {topic2} never existed", " with {num} examples", " in {lang}", " that a {role} would enjoy",
           " and {topic2}", " and explain why", " step by step", " with a twist", " in a {adj2} tone")
_OPENERS = ("", "", "", "", "Please", "Could you", "In your own words,", "For my class,", "As an expert,", "Quickly,",
            "For a newsletter,", "Without jargon,", "In plain English,", "Step by step,", "For fun,", "Briefly,",
            "I need help:", "Help me", "Can you", "Try to", "Your task:", "Here is a challenge:")
_CONSTRAINTS = (
    "Use exactly {num} words.", "Answer in {lang}.", "Avoid the letter e.", "End with a question.",
    "Keep it under {num} sentences.", "Include the word '{word}'.", "Format the answer as a table.",
    "Mention {topic3} at least once.", "Use only lowercase letters.", "Start every line with a dash.",
    "Do not use any commas.", "Write it as a numbered list.", "Put the title in double quotes.",
    "Wrap the whole answer in JSON.", "Use {num} bullet points.", "Make the first word '{word}'.",
)
_CONTEXTS = (
    "It is for {audience} in {place}.", "The reader is a {adj} {role}.", "Imagine you are a {role} from {place}.",
    "This is for a {form} contest.", "My {role} asked me for this.", "Assume the reader knows nothing about {topic3}.",
)
_SLOTS = {
    "form": ("poem", "story", "haiku", "limerick", "letter", "speech", "song", "essay", "review", "dialogue",
             "riddle", "paragraph", "sentence", "slogan", "recipe", "report", "tweet", "blog post", "fable", "memo"),
    "adj": ("short", "funny", "formal", "friendly", "detailed", "persuasive", "cheerful", "gloomy", "simple",
            "surprising", "useful", "practical", "strange", "calm", "dramatic", "modern", "classic", "gentle",
            "bold", "quiet", "curious", "honest", "playful", "serious"),
    "audience": ("children", "students", "beginners", "engineers", "tourists", "teachers", "parents", "gardeners",
                 "musicians", "doctors", "farmers", "retirees", "investors", "athletes", "chefs", "sailors"),
    "role": ("teacher", "nurse", "pilot", "baker", "coach", "librarian", "plumber", "painter", "scientist",
             "journalist", "lawyer", "student", "grandmother", "mayor", "carpenter", "gardener"),
    "num": ("two", "three", "four", "five", "six", "seven", "eight", "ten", "2", "3", "4", "5", "12", "20"),
    "place": ("the kitchen", "a hospital", "the city", "a school", "the desert", "the forest", "an office",
              "space", "the ocean", "a village", "the mountains", "a library", "a museum", "Lisbon", "Nairobi",
              "Kyoto", "a farm", "an airport", "a castle"),
    "lang": ("French", "Spanish", "German", "Italian", "Japanese", "Portuguese", "Dutch", "Swahili", "Polish"),
    "word": ("blue", "quietly", "harvest", "window", "spark", "promise", "orbit", "salt", "ladder", "echo",
             "thunder", "velvet", "compass", "lantern", "pepper", "marble"),
}
_TOPIC_WORDS = (
    "coffee", "rain", "volcanoes", "bicycles", "the moon", "photosynthesis", "inflation", "chess", "bees", "glaciers",
    "democracy", "jazz", "bread", "electricity", "friendship", "recycling", "the internet", "sleep", "tea",
    "robots", "gravity", "trains", "mushrooms", "taxes", "dinosaurs", "the stock market", "vaccines", "pottery",
    "wind turbines", "memory", "origami", "lighthouses", "the printing press", "soil", "whales", "clocks",
    "solar panels", "marathons", "libraries", "cheese", "earthquakes", "bridges", "maps", "honey", "kites",
    "tides", "owls", "bamboo", "submarines", "vinegar", "comets", "tulips", "elevators", "salt marshes", "violins",
)
_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "in", "bra", "qui", "zen", "ap", "mor", "lu",
              "tek", "sha", "no", "vi", "gar", "el", "on", "tri", "pa", "ru", "fen", "os", "da", "wen", "ix")


def _cumulative_zipf(n: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (r + 1) ** exponent for r in range(n)))


def _edit(rng: random.Random, text: str, filler: list[str]) -> str:
    """An earlier instruction with a word or two swapped, dropped or added, and its case or end changed."""
    words = text.split()
    for _ in range(rng.randint(1, 2)):
        op, at = rng.random(), rng.randrange(len(words))
        if op < 0.4:
            words[at] = rng.choice(filler)
        elif op < 0.7 and len(words) > 2:
            del words[at]
        else:
            words.insert(at, rng.choice(filler))
    text = " ".join(words)
    return text.lower() if rng.random() < 0.3 else text.rstrip(".?!") + rng.choice((".", "!", "", "?"))


def synthetic_instructions(n: int, seed: int = 0, *, near_share: float = DEDUP_NEAR_SHARE) -> list[str]:
    """Instructions like a generator's, deterministic in the seed.

    A task, often a constraint and a context, filled from Zipf-weighted words with a long
    tail of rare names (so the vocabulary keeps growing with n, as in real text), and a
    ``near_share`` of edits of earlier instructions: real near duplicates.
    """
    if n < 0 or not 0 <= near_share <= 1:
        raise ValueError(f"need n >= 0 and near_share in [0, 1], got n={n}, near_share={near_share}")
    rng = random.Random(seed)
    names = sorted({"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(30_000)})
    rng.shuffle(names)
    topics = list(_TOPIC_WORDS) + [f"{name} {rng.choice(_TOPIC_WORDS)}" for name in names[::2]] + names[1::2]
    topic_cum = _cumulative_zipf(len(topics), 0.75)
    tail = names[1::2]
    tail_cum = _cumulative_zipf(len(tail), 0.75)
    filler = [w for words in _SLOTS.values() for w in words]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < near_share:
            out.append(_edit(rng, rng.choice(out), filler))
            continue
        task = f"{rng.choice(_VERBS)} a {{adj}} {{form}} {rng.choice(_PREPS)} {{topic}}"
        task += "".join(rng.sample(_EXTRAS, rng.randint(0, 2))) + "."
        opener = rng.choice(_OPENERS)
        parts = [f"{opener} {task}" if opener else task[0].upper() + task[1:]]
        if rng.random() < 0.35:
            parts.append(rng.choice(_CONSTRAINTS))
        if rng.random() < 0.25:
            parts.append(rng.choice(_CONTEXTS))
        topic, topic2, topic3 = rng.choices(topics, cum_weights=topic_cum, k=3)
        # Half the slot words come from the long tail, so slot words are spread over a large vocabulary.
        fill = {k: rng.choice(v) if rng.random() < 0.5 else rng.choices(tail, cum_weights=tail_cum)[0]
                for k, v in _SLOTS.items()}
        out.append(" ".join(parts).format(topic=topic, topic2=topic2, topic3=topic3, adj2=rng.choice(_SLOTS["adj"]), **fill))
    return out


def _dedup_run(texts: list[str], *, pairwise: bool) -> tuple[float, list, Any]:
    from cai_bootstrap.dedup import DuplicateIndex

    index = DuplicateIndex(pairwise=pairwise)
    t = time.perf_counter()
    decisions = [index.add_if_new(x) for x in texts]
    return time.perf_counter() - t, decisions, index.work


def run_dedup_bench(*, n: int = DEDUP_BENCH_N, pairwise_n: int = DEDUP_BENCH_PAIRWISE_N, seed: int = 0) -> dict:
    """Seconds to deduplicate ``n`` synthetic instructions through the index, and the pairwise
    reference against the index on the first ``pairwise_n`` of them (same decisions checked)."""
    if n < 1 or not 1 <= pairwise_n <= n:
        raise ValueError(f"need n >= 1 and 1 <= pairwise_n <= n, got n={n}, pairwise_n={pairwise_n}")
    texts = synthetic_instructions(n, seed)
    t_ref, ref, work_ref = _dedup_run(texts[:pairwise_n], pairwise=True)
    t_small, small, work_small = _dedup_run(texts[:pairwise_n], pairwise=False)
    t_fast, fast, work = _dedup_run(texts, pairwise=False)
    kinds: dict[str, int] = {}
    for d in fast:
        kinds[d[0] if d else "kept"] = kinds.get(d[0] if d else "kept", 0) + 1
    return {
        "bench": "dedup", "n": n, "seed": seed, "decisions": kinds,
        "indexed": {"n": n, "seconds": t_fast, "work": vars(work)},
        "pairwise_reference": {"n": pairwise_n, "seconds": t_ref, "work": vars(work_ref)},
        "indexed_on_reference_n": {"n": pairwise_n, "seconds": t_small, "work": vars(work_small)},
        "same_decisions_on_reference_n": small == ref,
        "target_seconds": DEDUP_TARGET_SECONDS, "meets_target": t_fast < DEDUP_TARGET_SECONDS,
        "environment": {"python": platform.python_version(), "machine": platform.machine()},
    }


def bench_dedup(args: argparse.Namespace) -> dict:
    return run_dedup_bench(n=args.dedup_n, pairwise_n=args.dedup_pairwise_n, seed=args.seed)


def _print_dedup(r: dict) -> None:
    ref, small, fast = r["pairwise_reference"], r["indexed_on_reference_n"], r["indexed"]
    print(
        f"dedup: {fast['n']} synthetic instructions ({r['decisions']})\n"
        f"  pairwise reference {ref['n']:7d} in {ref['seconds']:8.1f} s\n"
        f"  index              {small['n']:7d} in {small['seconds']:8.1f} s (same decisions: {r['same_decisions_on_reference_n']})\n"
        f"  index              {fast['n']:7d} in {fast['seconds']:8.1f} s "
        f"(target {r['target_seconds']:.0f} s: {'met' if r['meets_target'] else 'NOT met'})"
    )

BENCHES: dict[str, tuple[Callable[[argparse.Namespace], dict], Callable[[dict], None]]] = {
    "critic": (bench_critic, _print_critic),
    "dedup": (bench_dedup, _print_dedup),
    "generation": (bench_generation, _print_generation),
    "training": (bench_training, _print_training),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cai_bootstrap.bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only this benchmark (repeatable)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder for <name>.json results (default: %(default)s)")
    p.add_argument("--items", type=int, default=64, help="critic items (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="critic batch size (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads; 0 = torch's choice. Default 1: on a machine shared with other jobs, "
        "more threads spin against them and the timings stop meaning anything",
    )
    p.add_argument("--model-dir", default=None, help="where the tiny test model is built (default: user cache)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default=None, help="model dtype (default: the loader's for the device)")
    p.add_argument("--gen-model", default=None, help="generation bench model (default: the tiny test model)")
    p.add_argument("--gen-prompts", type=int, default=32)
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--gen-max-new-tokens", type=int, default=48)
    p.add_argument("--dedup-n", type=int, default=DEDUP_BENCH_N)
    p.add_argument("--dedup-pairwise-n", type=int, default=DEDUP_BENCH_PAIRWISE_N)
    p.add_argument("--train-model", default="tiny-random")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--train-seq-len", type=int, default=128)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("items", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            print(f"bench: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.threads < 0:
        print("bench: error: --threads must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    for name in args.only or sorted(BENCHES):
        run, show = BENCHES[name]
        result = run(args)
        path = atomic_write_json(out / f"{name}.json", result)
        show(result)
        print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
