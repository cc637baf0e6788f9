"""Write the teaching notebooks ``notebooks/NN_*.ipynb`` from the cell lists in this file.

    python scripts/make_notebooks.py            # rewrite every notebook
    python scripts/make_notebooks.py 02 04      # only those whose number is given

The committed ``.ipynb`` files are the product; this script is how they are kept consistent. Every
notebook is written without outputs and with stable cell ids (so a regeneration only shows real
changes in a diff), starts with a markdown title saying what it teaches, has exactly one cell tagged
``parameters`` (papermill) defining ``SMOKE = False``, and derives its size knobs from ``SMOKE`` in
the next cell. CI runs each one with ``SMOKE = True`` (tests/test_notebooks.py).
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

def imports(numpy: bool = True, torch: bool = True, html: bool = False, show: bool = True, source: bool = True):
    """The first code cell of a notebook: the public API, what else the notebook uses, and (``source``)
    ``show_source`` to display a library function's code next to its equation."""
    lines = ["import inspect", ""] if source else []
    lines += ["import numpy as np"] if numpy else []
    lines += ["import torch"] if torch else []
    shown = ["HTML"] * html + ["Markdown"] * source + ["display"]
    lines += [f"from IPython.display import {', '.join(shown)}", "", "import a2tgpo_lab as lab", "from a2tgpo_lab import viz"]
    lines += ["from a2tgpo_lab.viz import show"] if show else []
    if source:
        lines += ["", "", "def show_source(function):",
                  '    """Display the source of a library function, so the code sits next to its equation."""',
                  '    display(Markdown(f"```python\\n{inspect.getsource(function)}```"))']
    return code("\n".join(lines))


def md(text: str):
    return new_markdown_cell(dedent(text).strip())


def code(text: str):
    return new_code_cell(dedent(text).strip())


def parameters(extra: str = ""):
    """The papermill parameters cell: CI injects ``SMOKE = True`` after it."""
    cell = code("SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one\n"
                + dedent(extra).strip())
    cell.metadata["tags"] = ["parameters"]
    return cell


# --------------------------------------------------------------------------------------------- 00
def quickstart():
    return [
        md(r"""
        # 00 · Quickstart: train a tool-using agent with A²TGPO

        **What you'll learn**

        - check that the stack is installed (versions, CPU or GPU);
        - what the bundled task is: invented multi-hop questions answered by searching a small corpus;
        - how to start an A²TGPO run on the bundled tiny model (≈ 1 M parameters, trains on a laptop CPU)
          and watch it in the live dashboard;
        - where each piece of the algorithm is explained (notebooks 01 → 08).
        """),
        parameters(),
        code("""
        STEPS = 3 if SMOKE else 40                            # RL steps (40: the config's default)
        PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)    # questions per step × rollouts per question
        EVAL_PROMPTS = 16 if SMOKE else 300                   # dev questions for the before / after exact match
        """),
        md("## 1. Install check"),
        imports(source=False),
        code("""
        import importlib
        import platform

        print(f"python {platform.python_version()} on {platform.machine()}, {torch.get_num_threads()} torch threads")
        for name in ("torch", "transformers", "peft", "bm25s", "plotly", "ipywidgets", "a2tgpo_lab"):
            print(f"  {name:13s} {importlib.import_module(name).__version__}")
        try:
            import bitsandbytes
            print(f"  {'bitsandbytes':13s} {bitsandbytes.__version__}  (4-bit NF4 weights, notebook 08)")
        except ImportError:
            print("  bitsandbytes  not installed: only needed for load_in_4bit (pip install 'a2tgpo_lab[quant]')")
        print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none: everything here runs on the CPU")
        """),
        md(r"""
        ## 2. The task: search, read, search again, answer

        The bundled world is invented (so no model can know it in advance): about a thousand companies and
        people, sixty cities, and facts such as *"Velmora was founded by Tarsk."* and *"Tarsk was born in
        Oslund."*, each a short document of a corpus searched with BM25. Questions take 1 to 3 searches:
        *who founded C?*, *where was the founder of C born?*, *in which country …?*.

        The agent speaks a small text protocol (`a2tgpo_lab/protocol.py`): one action per assistant turn,
        either `<search> query </search>` (the tool's `<information> … </information>` comes back as the next
        user message) or `<answer> … </answer>`, which ends the rollout.
        """),
        code("""
        train_questions, dev_questions = lab.load_split("train"), lab.load_split("dev")
        example = next(q for q in train_questions if q.qtype == "chain2")
        print(f"{len(train_questions)} train / {len(dev_questions)} dev questions; e.g. ({example.qtype}, {example.hops} hops):")
        print("  question:", example.question)
        print("  gold answers:", example.answers)
        tool = lab.bundled_search_tool(topk=2)
        for query in example.meta["queries"]:
            print(f"\\n<search> {query} </search>\\n  ->", tool(query))
        """),
        md(r"""
        ## 3. An A²TGPO run with the live dashboard

        `lab.preset("a2tgpo", ...)` is an `A2TGPOConfig` (every knob in one dataclass, TRL's names where they
        exist). The trainer loads the bundled tiny model: a Qwen3-architecture causal LM with a word-level
        tokenizer, warm-started by supervised fine-tuning on demonstrations so it already follows the
        protocol, but imperfectly: it often answers a guess after the first search of a 2-hop question.
        That is the headroom RL should remove.

        Each step samples `GENERATIONS` rollouts for each of `PROMPTS` questions, scores the information gain
        of every search (notebook 01), turns it into per-turn advantages (02, 03), and takes a PPO step with
        per-turn clip ranges (04). The dashboard shows every step as it arrives; **pause / resume / stop**
        act after the current step (notebook 05 trains in the background so the buttons stay live).
        """),
        code("""
        import tempfile

        cfg = lab.preset("a2tgpo", max_steps=STEPS, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         eval_num_prompts=EVAL_PROMPTS, eval_steps=10_000, save_steps=10_000,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_quickstart_"))
        trainer = lab.A2TGPOTrainer(cfg, train_examples=train_questions, eval_examples=dev_questions, tool=tool)
        before = trainer.evaluate()
        print(f"greedy dev exact match before RL: {before['eval/em']:.3f} on {EVAL_PROMPTS} questions")
        """),
        code("""
        dashboard = viz.Dashboard(trainer)
        display(dashboard)
        """),
        code("""
        trainer.train()
        after = trainer.evaluate()
        print(f"greedy dev exact match: {before['eval/em']:.3f} before -> {after['eval/em']:.3f} after {STEPS} steps")
        for key in ("eval/em/chain2", "eval/search_calls", "eval/format_error_rate"):
            if key in after:
                print(f"  {key:24s} {before.get(key, float('nan')):.3f} -> {after[key]:.3f}")
        """),
        md(r"""
        In the smoke setting (3 steps of 16 rollouts, 16 questions) nothing can be read from these numbers.
        With `SMOKE = False` (40 steps of 64 rollouts, 300 dev questions) one run measured on a 2-core CPU
        (about 1.5 minutes when the machine is otherwise idle) went from exact match 0.46 to 0.58; on the
        2-hop *chain* questions from 0.00 to 0.96, as the agent learned to make the second search instead of
        guessing after the first (searches per question 1.17 → 1.84). Look at more than the overall number:
        `after` holds the exact match per question type, the searches per question and the format error
        rate. A single run is one sample: notebook 06 shows how to compare methods honestly (several seeds,
        and the noise of an exact match on a few hundred questions).

        The training curves, drawn statically (the same figure builder the dashboard uses):
        """),
        code("show(viz.training_curves_figure(trainer.history))"),
        md(r"""
        ## 4. One step, as a record

        Every step produces one `StepRecord` (`a2tgpo_lab/records.py`): the rollouts, the probe probabilities
        `p`, the raw and normalized information gain, the per-turn advantages, clip factors and bounds, and
        per-token masks, ratios and clip flags. Every figure, the dashboard, the logs and the tests read it.
        """),
        code("""
        record = trainer.records[-1]
        i = int(np.argmax(record.num_tool_turns))          # a rollout with the most searches
        print(f"step {record.step}: {record.batch_size} rollouts, {record.max_turns} turn columns")
        print("question:", record.questions[i], "| gold:", record.answers[i][0])
        for k, text in enumerate(record.turn_texts[i], start=1):
            print(f"  turn {k}: {text}")
        print("probe p_t (t = 0 is the question alone):", np.round(record.p[i], 4))
        print("raw IG per tool turn:                   ", np.round(record.ig[i], 4))
        print("advantage per turn:                     ", np.round(record.advantages[i], 3))
        print("clip factor per turn:                   ", np.round(record.clip_factor[i], 4))
        """),
        md(r"""
        ## Where next

        | notebook | one idea |
        |---|---|
        | 01_information_gain | the probe: how likely is the gold answer after each turn, and IG = its change |
        | 02_turn_group_normalization | z-scoring IG per (prompt, turn index) instead of pooling all turns (IGPO) |
        | 03_variance_rescaling | the discounted sum of a turn's future terms, divided by √(number of terms) |
        | 04_adaptive_clipping | a wider PPO trust region for turns that gained information, narrower for the others |
        | 05_live_training | a run in the background with the live dashboard: pause, inspect, resume |
        | 06_compare_and_ablate | GRPO vs IGPO vs A²TGPO and the three ablations, read honestly |
        | 07_debugging | the rollout inspector and the common failure modes |
        | 08_single_gpu | a real Hugging Face model with LoRA and 4-bit weights on one GPU |

        From a terminal the same run is `a2tgpo-lab train` (the config's defaults are this quickstart's setting).
        """),
    ]


# --------------------------------------------------------------------------------------------- 01
def information_gain():
    return [
        md(r"""
        # 01 · Information gain: how much closer did this search bring the answer?

        **What you'll learn**

        - the *probe*: after every turn, teacher-force "I have enough information to answer. ⟨answer⟩" and read
          off how likely the model finds the **gold** answer;
        - $p_t$ over the turns of real rollouts of the bundled model, and the information gain (IG) of each search;
        - probability difference (the default) vs log-probability difference;
        - why IG needs the gold answer, and what that means for when it can be used.
        """),
        parameters(),
        code("""
        PROMPTS, GENERATIONS = (4, 4) if SMOKE else (12, 8)   # 2- and 3-hop questions × rollouts per question
        """),
        imports(html=True),
        md(r"""
        ## 1. The equation

        Rollout $i$ is a dialogue: assistant turn 1, tool result, turn 2, result, …, and an answer turn. Let
        $c_t$ be the chat-rendered context after turn $t$ and its observation ($c_0$ is the question alone),
        $a = (a_1, \dots, a_m)$ the tokens of the gold answer, and $s$ the fixed probe suffix. With the policy
        that sampled the rollouts, $\pi_\text{old}$ (no gradient, logits divided by the sampling temperature):

        $$\ell_t = \frac{1}{m}\sum_{j=1}^{m} \log \pi_\text{old}\left(a_j \mid c_t,\, s,\, a_{<j}\right), \qquad p_t = e^{\ell_t}, \qquad t = 0, \dots, K_i$$

        and tool turn $k$ earns how much it moved that number:

        $$\mathrm{IG}_{i,k} = p_k - p_{k-1}, \qquad k = 1, \dots, K_i \quad (\text{the answer turn earns no IG}).$$

        $p_t$ is a geometric mean of per-token probabilities, so it is comparable across answers of different lengths.
        """),
        md("## 2. The probe on real rollouts of the bundled model"),
        code("""
        import tempfile

        cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb01_"))
        model, tokenizer = lab.load_model_and_tokenizer(cfg)
        tool = lab.bundled_search_tool(topk=cfg.retrieval_topk)
        questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")][:PROMPTS]
        traj = lab.generate_rollouts(model, tokenizer, questions, tool, cfg, generator=torch.Generator().manual_seed(0))
        probe_logprob_mean, probe_text = lab.score_probes(model, tokenizer, traj, cfg)
        print(f"{traj.batch_size} rollouts; probe scores ℓ: {tuple(probe_logprob_mean.shape)} = [B, T+1]")
        print("the probe suffix (rollout 0's gold answer):", probe_text)
        """),
        md(r"""
        Here is exactly what the model reads when the probe is scored after turn $t$ of one rollout: the
        context up to the end of observation $t$ (the chat template's markers included), then the suffix. Only
        the gold answer's tokens are scored. The line *"I have enough information to answer ."* is the same
        line the bundled model's demonstrations put before every answer, so the probe is in-distribution.
        """),
        code("""
        searched = [b for b in range(GENERATIONS) if traj.num_tool_turns[b] >= 1]
        i = searched[0] if searched else 0           # a rollout of prompt 0 (its gold is the one in probe_text)
        t = min(1, int(traj.num_tool_turns[i]))
        context = tokenizer.decode(traj.input_ids[i, : traj.context_ends[i, t]].tolist(), skip_special_tokens=False)
        print(f"rollout {i}, context after turn {t}:\\n{context}\\n--- probe suffix ---\\n{probe_text}")
        """),
        md(r"""
        The fast scorer above encodes each rollout once and scores all its probes side by side (a KV cache and a
        block attention mask); `lab.score_probes_naive` runs one forward pass per (rollout, turn) and is the
        reference it is tested against. They agree:
        """),
        code("""
        naive, _ = lab.score_probes_naive(model, tokenizer, traj, cfg)
        both = torch.isfinite(naive)
        print("largest |fast − naive| over", int(both.sum()), "probes:",
              float((probe_logprob_mean[both] - naive[both]).abs().max()))
        """),
        md("IG from the probe scores is plain arithmetic:"),
        code("show_source(lab.information_gain)"),
        code("""
        ig, p, dropped = lab.information_gain(probe_logprob_mean, traj.num_tool_turns)
        print(f"IG terms dropped as NaN/inf: {dropped}")
        print(f"{'rollout':>7}  {'t':>2}  {'query of turn t':38s} {'p_t':>8} {'IG_t':>9}")
        for b in range(min(traj.batch_size, 2 * GENERATIONS)):
            for t in range(int(traj.num_tool_turns[b]) + 1):
                query = "(question only)" if t == 0 else traj.actions[b][t - 1].content
                gain = "" if t == 0 else f"{float(ig[b, t - 1]):+9.4f}"
                print(f"{b:7d}  {t:2d}  {query[:38]:38s} {float(p[b, t]):8.4f} {gain}")
            print(f"{'':11s}final answer: {traj.final_answer[b]!r} (gold {traj.answers[b][0]!r}), reward {float(traj.outcome_reward[b]):+.0f}")
        """),
        md(r"""
        Read the table with the world in mind. Before any search the model barely knows what *kind* of answer
        is wanted, so $p_0$ is tiny. A search can raise $p$ in two ways: by telling the model the answer's type
        (a country, a city: the probability spreads over a few dozen candidates) or by retrieving the answer
        itself, which the model can copy into its answer ($p$ jumps towards 1 when it does). A search for the
        wrong entity can *lower* $p$: a negative IG, a per-turn penalty where an outcome reward could only blame
        the whole rollout. Split by whether the turn's observation contains the gold answer:
        """),
        code("""
        with_answer, without_answer = [], []
        for b in range(traj.batch_size):
            for k in range(1, int(traj.num_tool_turns[b]) + 1):
                found = traj.answers[b][0] in traj.observations[b][k - 1].split()
                (with_answer if found else without_answer).append(float(ig[b, k - 1]))
        for label, gains in (("observation contains the gold answer", with_answer), ("it does not", without_answer)):
            summary = f"mean IG {np.mean(gains):+.4f}, largest {np.max(gains):+.4f}" if gains else "none in this batch"
            print(f"{label:38s} {len(gains):3d} turns: {summary}")
        """),
        md(r"""
        ## 3. The same numbers inside a training step

        The trainer runs exactly these calls in every step (`generate_rollouts` → `score_probes` →
        `information_gain`) and stores `p` and `ig` in the step's record. One step on these questions:
        """),
        code("""
        trainer = lab.A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=questions, tool=tool)
        record = trainer.step()
        show(viz.ig_per_rollout_figure(record, "p"))
        """),
        code('show(viz.ig_per_rollout_figure(record, "ig"))'),
        md(r"""
        Colour is the prompt, ● a correct final answer, ✕ a wrong or missing one. Rollouts of the same prompt
        that issue the same queries get identical values (the probe is deterministic), which is why some
        lines lie on top of each other (they are slightly offset); notebook 02 shows what that does to the
        normalization.

        **Play with it**: pick a rollout and read its turns with $p_t$ and IG side by side.
        """),
        code("""
        import html

        import ipywidgets as widgets


        def transcript(i: int) -> str:
            \"\"\"Rollout i's turns with p_t and IG_t, as an HTML table.\"\"\"
            rows = [f"<tr><td>0</td><td><i>question</i>: {html.escape(record.questions[i])}</td><td></td>"
                    f"<td>{record.p[i, 0]:.4f}</td><td></td></tr>"]
            for k, text in enumerate(record.turn_texts[i], start=1):
                tool_turn = k <= record.num_tool_turns[i]
                seen = html.escape(record.observations[i][k - 1][:160]) if tool_turn else ""
                p_k = f"{record.p[i, k]:.4f}" if tool_turn else ""
                gain = f"{record.ig[i, k - 1]:+.4f}" if tool_turn else "(answer turn: no IG)"
                rows.append(f"<tr><td>{k}</td><td><code>{html.escape(text)}</code></td><td style='font-size:11px'>{seen}</td>"
                            f"<td>{p_k}</td><td>{gain}</td></tr>")
            head = "<tr><th>t</th><th>assistant turn</th><th>observation</th><th>p_t</th><th>IG_t</th></tr>"
            return (f"<p>gold <b>{html.escape(record.answers[i][0])}</b>, reward {record.outcome_reward[i]:+.0f}, "
                    f"{record.end_reason[i]}</p><table>{head}{''.join(rows)}</table>")


        deepest = int(np.argmax(record.num_tool_turns))
        picker = widgets.Dropdown(options=[(f"{b}: prompt {record.prompt_index[b]}, {record.num_tool_turns[b]} searches, "
                                            f"reward {record.outcome_reward[b]:+.0f}", b) for b in range(record.batch_size)],
                                  value=deepest, description="rollout", layout=widgets.Layout(width="460px"))
        table = widgets.HTML(transcript(deepest))
        picker.observe(lambda change: setattr(table, "value", transcript(change["new"])), names="value")
        display(widgets.VBox([picker, table]))
        """),
        md("The same table without widgets (it stays in a saved notebook), for the rollout with the most searches:"),
        code("display(HTML(transcript(deepest)))"),
        md(r"""
        ## 4. Probability difference or log-probability difference?

        The knob `ig_mode="logprob"` uses $\ell_k - \ell_{k-1}$ instead. The two rank turns differently:
        moving $p$ from 0.001 to 0.01 is a log-gain of 2.3 but a probability gain of only 0.009, while
        moving it from 0.5 to 0.99 is a log-gain of 0.68 and a probability gain of 0.49. The probability
        difference (the default, as in IGPO) rewards the turn that made the answer *likely*; the log
        difference also rewards progress among unlikely answers, and can be very negative when a turn
        makes the gold answer nearly impossible. Every tool turn of the step, both ways:
        """),
        code("""
        import plotly.graph_objects as go

        turns = torch.as_tensor(record.num_tool_turns)
        ig_prob, _, _ = lab.information_gain(torch.as_tensor(np.log(record.p)), turns, mode="prob")
        ig_log, _, _ = lab.information_gain(torch.as_tensor(np.log(record.p)), turns, mode="logprob")
        rows, cols = np.nonzero(np.isfinite(ig_prob.numpy()))
        figure = go.Figure(go.Scatter(
            x=ig_prob.numpy()[rows, cols], y=ig_log.numpy()[rows, cols], mode="markers",
            marker=dict(size=9, color=cols + 1, colorscale="Viridis", colorbar=dict(title="turn k")),
            customdata=np.stack([rows, cols + 1], axis=1),
            hovertemplate="rollout %{customdata[0]}, turn %{customdata[1]}<br>p diff %{x:.4f}<br>log-p diff %{y:.3f}<extra></extra>"))
        figure.update_layout(template="plotly_white", height=380, xaxis_title="IG, probability difference (default)",
                             yaxis_title="IG, log-probability difference", title=f"the two IG modes on step {record.step}")
        show(figure)
        """),
        md(r"""
        What to look for: first searches that only reveal the answer's type move $p$ from about $10^{-4}$ to
        about $0.1$, a large log-gain (several nats) but a small probability gain; a search that retrieves the
        answer and lifts $p$ to near 1 has the largest probability gain, yet often a smaller log-gain than the
        type information. Searches that make the gold answer nearly impossible sit far below zero in log
        mode only. Which ordering you want is the choice the `ig_mode` knob makes.
        """),
        md(r"""
        ## 5. Why IG needs the gold answer

        The probe scores the *gold* answer. Score the same rollouts against a decoy (another question's
        answer): IG is not "the model became more confident", it is "the model became more confident **in the
        gold answer**". Two consequences:

        - IG exists only where the gold answer is known: it is a *training* signal for questions with
          answers, never something an agent can compute at test time;
        - with several gold aliases the probe uses the first (`answers[0]`), while the outcome reward takes
          the best match over all of them.
        """),
        code("""
        import dataclasses

        batch = traj.batch_size
        decoys = [traj.answers[(b + GENERATIONS) % batch] for b in range(batch)]   # the next prompt's answer
        decoy_logprob, _ = lab.score_probes(model, tokenizer, dataclasses.replace(traj, answers=decoys), cfg)
        _, p_decoy, _ = lab.information_gain(decoy_logprob, traj.num_tool_turns)
        last = traj.num_tool_turns.long()[:, None]
        p_gold_end, p_decoy_end = p.gather(1, last)[:, 0], p_decoy.gather(1, last)[:, 0]
        found = torch.tensor([any(traj.answers[b][0] in seen.split() for seen in traj.observations[b]) for b in range(batch)])
        print(f"{'rollouts':44s} {'n':>3s} {'p(gold) at the end':>19s} {'p(decoy) at the end':>20s}")
        for label, rows in (("whose searches retrieved the gold answer", found), ("whose searches did not", ~found)):
            if rows.any():
                print(f"{label:44s} {int(rows.sum()):3d} {float(p_gold_end[rows].mean()):19.4f} {float(p_decoy_end[rows].mean()):20.4f}")
        """),
        md(r"""
        Where the searches never reached the answer, gold and decoy can end up about equally likely: the
        model only learned what kind of answer to give, and IG then rewards the type information, equally for
        any answer of that type. Where the answer was retrieved, the gold answer pulls ahead of the decoy (by
        how much depends on how well the model copies from its context). IG measures progress towards *the*
        answer only to the extent that the policy can use what it read.
        """),
        md(r"""
        **Takeaways.** $p_t$ is one teacher-forced forward pass per turn (shared through the KV cache); IG is
        its change per search; it is dense (every search gets a number) and specific (a search for the wrong
        entity is punished where it happened). Raw IG values live on different scales at different depths
        and are often identical across rollouts, which is what the normalization of notebook 02 must handle.
        """),
    ]


# --------------------------------------------------------------------------------------------- 02
def turn_group_normalization():
    return [
        md(r"""
        # 02 · Turn-group normalization: compare each turn with the same turn of the other rollouts

        **What you'll learn**

        - the z-score of IG inside each (prompt, turn index) group (A²TGPO) vs one z-score over every turn of
          the prompt (IGPO), on the worked example and on a real batch;
        - why pooling turns a normalized IG into a statement about *depth* rather than *quality*;
        - deep turns reached by few rollouts: group sizes, and `min_group_size`;
        - groups of identical queries (std 0: the turn falls back to the outcome term);
        - groups that differ only by noise (0.016499 vs 0.016498) and the knobs `group_std_floor`,
          `ig_center_only`, `min_group_size`.
        """),
        parameters(),
        code("""
        PROMPTS, GENERATIONS = (4, 6) if SMOKE else (8, 8)   # 2- and 3-hop questions × rollouts per question
        """),
        imports(),
        md(r"""
        ## 1. The equation

        For prompt $q$ and turn index $k$, the group $G_{q,k}$ holds the IG of every rollout of $q$ that has a
        tool turn $k$. With its mean $\mu_{q,k}$ and population standard deviation $\sigma_{q,k}$:

        $$\tilde I_{i,k} = \frac{\mathrm{IG}_{i,k} - \mu_{q,k}}{\sigma_{q,k} + 10^{-6}}, \qquad \tilde I_{i,k} = 0 \text{ when } |G_{q,k}| < \texttt{min\_group\_size} \text{ or the group is constant.}$$

        IGPO pools instead: one group per prompt with the IG of *all* turns of all its rollouts. The
        outcome rewards are z-scored separately over the $G$ rollouts of the prompt (GRPO style): $\tilde o_i$.

        The two functions differ in one line, the group id: `prompt_index * T + turn column` vs `prompt_index`.
        """),
        code("show_source(lab.turn_group_normalize)"),
        code("show_source(lab.pooled_normalize)"),
        md(r"""
        ## 2. The worked example (ALGORITHM.md §8)

        One prompt, three rollouts with IG $[0.20, 0.40]$, $[0.05]$, $[0.10, 0.05, 0.35]$. Turn 1's group is
        $\{0.20, 0.05, 0.10\}$, turn 2's is $\{0.40, 0.05\}$, turn 3's is a singleton.
        """),
        code("""
        nan = float("nan")
        ig_example = torch.tensor([[0.20, 0.40, nan], [0.05, nan, nan], [0.10, 0.05, 0.35]])
        one_prompt = torch.tensor([0, 0, 0])
        by_turn, group_id, group_size, _ = lab.turn_group_normalize(ig_example, one_prompt)
        pooled, _, _, _ = lab.pooled_normalize(ig_example, one_prompt)
        print("group id [B, T]:\\n", group_id.numpy())
        print("group size [B, T]:\\n", group_size.numpy())
        print("Ĩ per (prompt, turn) (expected ≈ [1.3363, 1, –], [−1.0690], [−0.2673, −1, 0]):\\n", by_turn.numpy().round(4))
        print("Ĩ pooled over all turns (IGPO):\\n", pooled.numpy().round(4))
        print("õ (outcomes 1, 0, 1; expected ≈ 0.7071, −1.4142, 0.7071):",
              lab.normalize_outcomes(torch.tensor([1.0, 0.0, 1.0]), one_prompt).numpy().round(4))
        """),
        md(r"""
        Pooled, rollout 3's last search (IG 0.35, the best search of the batch) and its second (IG 0.05) are
        compared with each other and with turn 1s; per turn, the 0.35 stands alone (a singleton: $\tilde I = 0$,
        it cannot be judged) and the 0.05 at turn 2 is judged only against the 0.40 at the same depth.

        ## 3. A real batch

        One training step of the bundled model on 2- and 3-hop questions (`trainer.step()` returns its record):
        """),
        code("""
        import tempfile

        questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
        cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb02_"))
        trainer = lab.A2TGPOTrainer(cfg, train_examples=questions)
        record = trainer.step()
        ig, prompts = torch.as_tensor(record.ig), torch.as_tensor(record.prompt_index)
        per_turn, _, _, _ = lab.turn_group_normalize(ig, prompts)
        pooled, _, _, _ = lab.pooled_normalize(ig, prompts)
        print(f"{'turn k':>6} {'IG values':>9} {'mean raw IG':>12} {'median raw IG':>14} {'pooled Ĩ > 0':>13} "
              f"{'per-turn Ĩ > 0':>15}")
        for k in range(1, record.max_turns + 1):
            present = np.isfinite(record.ig[:, k - 1])
            if present.any():
                raw = record.ig[present, k - 1]
                print(f"{k:6d} {present.sum():9d} {raw.mean():12.4f} {np.median(raw):14.4f} "
                      f"{float((pooled[present, k - 1] > 0).float().mean()):13.0%} "
                      f"{float((per_turn[present, k - 1] > 0).float().mean()):15.0%}")
        """),
        md(r"""
        The IG of different depths lives on different scales: the first search of this tiny model mostly
        reveals the answer's *type* (a small, steady gain), a later one either retrieves the answer itself (a
        large jump) or adds nothing. Pooling ranks every turn against the turns of *all* depths of its prompt, so
        the share of positive $\tilde I$ differs by depth (the `pooled Ĩ > 0` column), whatever each search did:
        the normalized IG says as much about a turn's depth as about its quality. Per (prompt, turn) every depth
        is centred on its own mean, and a turn's $\tilde I$ only says how it compares with the same turn of its
        siblings.
        """),
        md("Side by side for the prompt with the most multi-search rollouts:"),
        code("""
        deep = {int(q): int(((record.prompt_index == q) & (record.num_tool_turns >= 2)).sum())
                for q in np.unique(record.prompt_index)}
        prompt = max(deep, key=deep.get)
        print(f"prompt {prompt}: {deep[prompt]} of its rollouts searched at least twice")
        show(viz.pooled_vs_turn_group_figure(record, prompt=prompt))
        """),
        md(r"""
        ## 4. Group sizes: deep turns are reached by few rollouts

        Rollouts stop searching at different depths, so the group of turn 3 may hold two rollouts, or one.
        A singleton gives $\tilde I = 0$ (there is nothing to compare with); `min_group_size` raises that
        threshold. Each cell of the heatmap is annotated with its group size; ✕ marks groups too small to
        normalize, ○ constant ones.
        """),
        code("""
        from collections import Counter

        show(viz.group_heatmap_figure(record))
        for k in range(1, record.max_turns + 1):
            ids = record.group_id[:, k - 1]
            sizes = Counter(Counter(ids[ids >= 0].tolist()).values())
            if sizes:
                print(f"turn {k}: groups by size {dict(sorted(sizes.items()))}  (size: how many groups)")
        """),
        md(r"""
        ## 5. Identical queries: a group with zero spread

        The probe is deterministic, so two rollouts of the same prompt that issue the same query at turn 1 (and
        get the same observation) have bit-identical IG. A group where every member did the same has no
        spread: $\tilde I = 0$ for all of them (counted in `record.zero_std_group_frac`), and their advantage at
        that turn comes from the remaining terms alone, the outcome $\tilde o_i$ shrunk by the √n rescale
        (notebook 03).
        """),
        code("""
        def constant_groups(record):
            \"\"\"(prompt, turn, member rollouts) of every IG group with at least 2 members and zero spread.\"\"\"
            found = []
            for gid in np.unique(record.group_id[record.group_id >= 0]):
                rows, cols = np.nonzero(record.group_id == gid)
                if rows.size >= 2 and np.ptp(record.ig[rows, cols]) == 0:
                    found.append((int(record.prompt_index[rows[0]]), int(cols[0]) + 1, rows))
            return found


        print(f"zero-std share of IG groups in this step: {record.zero_std_group_frac:.2f}")
        constant = constant_groups(record)
        source = record
        if not constant:
            print("no constant group in this (small) batch: using the synthetic sample record, whose prompt 0 "
                  "has one by construction")
            source = viz.sample_step_record()
            constant = constant_groups(source)
        prompt, turn, members = constant[0]
        for r in members:
            print(f"rollout {r:2d}, turn {turn}: query {source.tool_calls[r][turn - 1]!r:32} IG {source.ig[r, turn - 1]:+.6f} "
                  f"Ĩ {source.ig_norm[r, turn - 1]:+.1f}  õ {source.outcome_norm[r]:+.3f}  A {source.advantages[r, turn - 1]:+.3f}")
        show(viz.group_normalization_figure(source, prompt=prompt, turn=turn))
        """),
        md(r"""
        ## 6. Groups that differ only by noise

        The opposite trap: a group whose IG values differ in the fifth or sixth decimal (equally useless searches
        whose observations differ by one word) is stretched by the z-score to $O(1)$ advantages with opposite
        signs. The $\varepsilon = 10^{-6}$ in the denominator damps it only while the spread is below about
        $10^{-6}$ (0.016499 vs 0.016498 gives ±0.33; a spread of $10^{-5}$ already gives ±0.9). Three knobs:

        - `group_std_floor` (IG units): a group with $\sigma \le$ floor counts as constant ($\tilde I = 0$). Default
          0 (faithful to the paper); $10^{-3}$ removes noise-level groups while keeping real differences;
        - `ig_center_only`: $\tilde I = \mathrm{IG} - \mu$ without dividing by $\sigma$: tiny differences stay tiny
          (but then $\tilde I$ is on IG's scale, no longer unit-variance);
        - `min_group_size`: groups smaller than this give 0.
        """),
        code("""
        same_prompt = torch.zeros(4, dtype=torch.long)
        for values in ([0.016499, 0.016498, 0.016499, 0.016498], [0.01650, 0.01648, 0.01650, 0.01648]):
            noisy = torch.tensor(values)[:, None]          # [B = 4, T = 1]: one prompt, one turn
            print(f"IG {values}: std {noisy.std(unbiased=False):.1e}")
            for label, knobs in [("faithful (floor 0)", {}), ("group_std_floor=1e-3", dict(std_floor=1e-3)),
                                 ("ig_center_only=True", dict(center_only=True)), ("min_group_size=5", dict(min_group_size=5))]:
                z, _, _, _ = lab.turn_group_normalize(noisy, same_prompt, **knobs)
                print(f"  {label:22s} Ĩ = {np.array2string(z.squeeze(1).numpy(), precision=3)}")

        spreads = []
        for gid in np.unique(record.group_id[record.group_id >= 0]):
            rows, cols = np.nonzero(record.group_id == gid)
            if rows.size >= 2:
                spreads.append(record.ig[rows, cols].std())
        spreads = np.array(spreads)
        print(f"\\nthis step: {spreads.size} IG groups of size ≥ 2; std exactly 0: {(spreads == 0).sum()}; "
              f"0 < std ≤ 1e-3 (noise-level, blown up by the faithful z-score): {((spreads > 0) & (spreads <= 1e-3)).sum()}")
        """),
        md(r"""
        **Play with it**: renormalize this step's IG with other knobs and watch which groups switch to 0.
        """),
        code("""
        import dataclasses

        import ipywidgets as widgets
        import plotly.graph_objects as go


        def renormalized(record, normalization, std_floor, center_only, min_group_size):
            \"\"\"The record with Ĩ, group ids and sizes recomputed by the library under other knobs.\"\"\"
            normalize = lab.turn_group_normalize if normalization == "turn_group" else lab.pooled_normalize
            ig_norm, group_id, group_size, zero_frac = normalize(
                torch.as_tensor(record.ig), torch.as_tensor(record.prompt_index), min_group_size=min_group_size,
                std_floor=std_floor, center_only=center_only)
            config = {**record.config, "normalization": normalization, "group_std_floor": std_floor,
                      "ig_center_only": center_only, "min_group_size": min_group_size}
            return dataclasses.replace(record, ig_norm=ig_norm.numpy(), group_id=group_id.numpy(),
                                       group_size=group_size.numpy(), zero_std_group_frac=zero_frac, config=config)


        controls = dict(
            normalization=widgets.ToggleButtons(options=["turn_group", "pooled"], description="groups"),
            std_floor=widgets.SelectionSlider(options=[0.0, 1e-6, 1e-4, 1e-3, 1e-2, 5e-2], value=0.0, description="std floor"),
            center_only=widgets.Checkbox(value=False, description="centre only"),
            min_group_size=widgets.IntSlider(value=2, min=1, max=GENERATIONS, description="min size"))
        readout = widgets.HTML(f"constant groups (size ≥ max(2, min size)): {record.zero_std_group_frac:.2f}")
        heatmap = go.FigureWidget(viz.group_heatmap_figure(record))


        def redraw(*_):
            changed = renormalized(record, **{name: control.value for name, control in controls.items()})
            readout.value = f"constant groups (size ≥ max(2, min size)): {changed.zero_std_group_frac:.2f}"
            viz.sync_figure(heatmap, viz.group_heatmap_figure(changed))


        for control in controls.values():
            control.observe(redraw, names="value")
        display(widgets.VBox([widgets.HBox(list(controls.values())[:2]), widgets.HBox(list(controls.values())[2:]),
                              readout, heatmap]))
        """),
        md(r"""
        **Takeaways.** Normalizing per (prompt, turn index) compares like with like; pooling compares a first
        search with a last one. Small and constant groups give 0, which silently hands those turns to the
        outcome term: watch `ig/zero_std_group_frac` and the group sizes. Noise-level spreads are the
        z-score's blind spot; `group_std_floor` is the knob.
        """),
    ]


# --------------------------------------------------------------------------------------------- 03
def variance_rescaling():
    return [
        md(r"""
        # 03 · Variance rescaling: the same scale for every turn, however many terms follow it

        **What you'll learn**

        - how a turn's advantage sums the normalized rewards of that turn and every later one;
        - why that sum's spread grows with the number of terms, and how dividing by √n fixes it;
        - advantage spread vs turn depth with and without √n, on a real batch;
        - the discount γ and the exact-γ variant of the divisor.
        """),
        parameters(),
        code("""
        PROMPTS, GENERATIONS = (4, 6) if SMOKE else (8, 8)
        SIMULATED = 2_000 if SMOKE else 20_000     # random rollouts for the variance check
        """),
        imports(numpy=False),
        md(r"""
        ## 1. The equation

        Rollout $i$'s reward terms are its normalized IG per tool turn followed by its normalized outcome:
        $\tilde r_i = (\tilde I_{i,1}, \dots, \tilde I_{i,K_i}, \tilde o_i)$. Turn $t$ gets

        $$A_{i,t} = \frac{\sum_{k=t}^{K_i+1} \gamma^{k-t}\, \tilde r_{i,k}}{\sqrt{K_i + 2 - t}}, \qquad t = 1, \dots, K_i + 1,$$

        the discounted sum of the terms from $t$ on, divided by the square root of how many terms were summed
        (default $\gamma = 1$). Every model token of turn $t$ receives $A_{i,t}$.

        Why divide: each $\tilde r$ is a z-score, roughly unit variance. A sum of $n$ independent unit-variance
        terms has standard deviation $\sqrt n$, so without the division (IGPO) the first turn of a 4-search
        rollout carries advantages about $\sqrt 5 \approx 2.2$ times wider than its answer turn, purely because
        of its position. The gradient then pushes hardest on early turns of long rollouts.
        """),
        code("show_source(lab.reward_terms)"),
        code("show_source(lab.accumulate)"),
        md("## 2. The worked example (ALGORITHM.md §8)"),
        code("""
        nan = float("nan")
        ig_example = torch.tensor([[0.20, 0.40, nan], [0.05, nan, nan], [0.10, 0.05, 0.35]])
        one_prompt, tool_turns = torch.tensor([0, 0, 0]), torch.tensor([2, 1, 3])
        ig_norm, _, _, _ = lab.turn_group_normalize(ig_example, one_prompt)
        outcome_norm = lab.normalize_outcomes(torch.tensor([1.0, 0.0, 1.0]), one_prompt)
        terms = lab.reward_terms(ig_norm, outcome_norm, tool_turns)
        rescaled, summed = lab.accumulate(terms, tool_turns, gamma=1.0, rescale="sqrt_n")
        print("terms r̃ [B, T+1]:\\n", terms.numpy().round(4))
        print("discounted sums (IGPO's advantages):\\n", summed.numpy().round(4))
        print("÷ √n (A²TGPO; expected ≈ [1.7571, 1.2071, 0.7071], [−1.7559, −1.4142], [−0.2801, −0.1691, 0.5, 0.7071]):\\n",
              rescaled.numpy().round(4))
        """),
        md(r"""
        ## 3. The variance argument, checked

        Random unit-normal terms for rollouts with 4 tool turns (5 terms each), accumulated by the library
        with each divisor; the standard deviation of $A_{i,t}$ at each turn:
        """),
        code("""
        import plotly.graph_objects as go

        RESCALES = ("none", "sqrt_n", "exact_gamma")
        generator = torch.Generator().manual_seed(0)
        random_terms = torch.randn(SIMULATED, 5, generator=generator, dtype=torch.float64)
        four_turns = torch.full((SIMULATED,), 4)


        def spread_figure(gamma):
            figure = go.Figure()
            for rescale in RESCALES:
                advantages, _ = lab.accumulate(random_terms, four_turns, gamma=gamma, rescale=rescale)
                figure.add_trace(go.Scatter(x=list(range(1, 6)), y=advantages.std(dim=0).numpy(), mode="lines+markers",
                                            name=rescale))
            figure.update_layout(template="plotly_white", height=340, yaxis=dict(title="std of A_{i,t}", rangemode="tozero"),
                                 xaxis=dict(title="turn t (5 = the answer turn)", dtick=1),
                                 title=f"unit-variance terms, K = 4, γ = {gamma}")
            return figure


        show(spread_figure(1.0))
        """),
        md(r"""
        ## 4. A real batch

        Real terms are not independent (a rollout's IG at consecutive turns is correlated, constant groups give
        zeros), so the √n correction is an approximation, but the depth effect is plain. One training step
        of the bundled model, and $A_{i,t}$ per depth both ways ($\sigma$ of each box printed above it):
        """),
        code("""
        import tempfile

        questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
        cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb03_"))
        record = lab.A2TGPOTrainer(cfg, train_examples=questions).step()
        show(viz.advantage_depth_figure(record))
        """),
        md(r"""
        ## 5. The discount γ and the exact-γ divisor

        With $\gamma < 1$ later terms count less, and the standard deviation of $\sum_{j<n} \gamma^j x_j$ is
        $\sqrt{\sum_{j<n} \gamma^{2j}}$, smaller than $\sqrt n$. So √n over-shrinks long sums when $\gamma < 1$.
        `rescale="exact_gamma"` divides by the exact value (the same as √n at $\gamma = 1$); `rescale="none"` is
        IGPO. **Play with it**: move γ and watch the three divisors on random terms (top) and the real batch
        (bottom, √n vs none at that γ).
        """),
        code("""
        import dataclasses

        import ipywidgets as widgets

        def depth_figure(gamma):
            return viz.advantage_depth_figure(dataclasses.replace(record, config={**record.config, "gamma": gamma}))


        gamma = widgets.FloatSlider(value=0.9, min=0.5, max=1.0, step=0.05, description="γ", continuous_update=False)
        simulated, real = go.FigureWidget(spread_figure(gamma.value)), go.FigureWidget(depth_figure(gamma.value))


        def redraw(change):
            viz.sync_figure(simulated, spread_figure(change["new"]))
            viz.sync_figure(real, depth_figure(change["new"]))


        gamma.observe(redraw, names="value")
        display(widgets.VBox([gamma, simulated, real]))
        """),
        md("The same comparison at γ = 0.9 without widgets (it stays in a saved notebook):"),
        code("show(spread_figure(0.9))"),
        md(r"""
        **Takeaways.** Without rescaling, an early turn's advantage is wide because many terms follow it; with
        √n every turn lives on the unit scale of its terms. With $\gamma = 1$ (the default) √n is exact for
        independent terms; with $\gamma < 1$ use `rescale="exact_gamma"`. The ablation `a2tgpo_no_rescale`
        (notebook 06) switches only this off.
        """),
    ]


# --------------------------------------------------------------------------------------------- 04
def adaptive_clipping():
    return [
        md(r"""
        # 04 · Adaptive turn-level clipping: a wider trust region where the turn gained information

        **What you'll learn**

        - the clip factor $c = 1 + \beta\,(2\sigma(\tilde I) - 1)$ and the per-turn clip band it scales;
        - the turn-level importance ratio (one ratio per turn, GSPO-style) and its narrow $\varepsilon$;
        - the clip explorer: move β, ε, Ĩ and the sign of A and watch the band and the gradient;
        - fixed vs adaptive clipping on the same real step, and which tokens got clipped.
        """),
        parameters(),
        code("""
        PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)
        """),
        imports(),
        md(r"""
        ## 1. The equations

        Each tool turn $k$ of rollout $i$ gets a clip factor from its normalized IG (notebook 02), the answer turn
        gets $c = 1$:

        $$c_{i,k} = 1 + \beta\left(2\,\sigma(\tilde I_{i,k}) - 1\right) \in (1 - \beta,\; 1 + \beta), \qquad \beta = 0.3,$$

        and the PPO clip band of turn $k$'s tokens becomes $[\,1 - c_{i,k}\,\varepsilon_\text{low},\; 1 + c_{i,k}\,\varepsilon_\text{high}\,]$.
        Per token, with ratio $s$ and turn advantage $A$:

        $$\mathcal L = -\min\left(s A,\; \operatorname{clip}(s,\, 1 - c\,\varepsilon_\text{low},\, 1 + c\,\varepsilon_\text{high})\, A\right).$$

        By default the ratio is **turn-level**: $\log s_\text{turn}$ is the mean over the turn's tokens of
        $\log \pi_\theta - \log \pi_\text{old}$, so a whole turn is clipped or not. Such an average moves far
        less than a single token's ratio, hence the narrow $\varepsilon_\text{low} = 3\cdot10^{-3}$,
        $\varepsilon_\text{high} = 4\cdot10^{-3}$ (the token-level knob uses 0.2 / 0.28).

        A turn that raised the probability of the gold answer more than its siblings ($\tilde I > 0$) may move
        further before its gradient is cut; a turn that lowered it is held closer to the old policy.
        """),
        code("show_source(lab.adaptive_clip_factor)"),
        code("show_source(lab.clip_bounds)"),
        md("On the worked example of ALGORITHM.md §8, rollout 1 (Ĩ = 1.3363 and 1 at its two searches, then its answer turn):"),
        code("""
        rollout_1 = torch.tensor([[1.3363, 1.0, float("nan")]])
        c = lab.adaptive_clip_factor(rollout_1, beta=0.3, num_tool_turns=torch.tensor([2]))
        low, high = lab.clip_bounds(c, eps_low=3e-3, eps_high=4e-3)
        print("c (expected ≈ 1.1751, 1.1386, 1.0):", c.numpy().round(4))
        print("bands:", [(round(float(a), 5), round(float(b), 5)) for a, b in zip(low[0], high[0])])
        """),
        md(r"""
        ## 2. The clip explorer

        Left the fixed band ($c = 1$, GRPO and IGPO), right the adaptive one. Red shading marks ratios where the
        objective is flat, i.e. the token gets no gradient: above the band for $A > 0$, below it for $A < 0$.
        """),
        code("display(viz.ClipExplorer(ig_norm=1.0, beta=0.3))"),
        md(r"""
        ## 3. When does clipping act at all?

        In the first pass over a batch $\pi_\theta = \pi_\text{old}$, so every ratio is 1 and no band matters.
        Clipping acts only when a batch is reused after an update: `num_iterations > 1` (PPO epochs) or
        `num_mini_batches > 1` (later mini-batches see a policy already moved by earlier ones). With the
        defaults (1 and 1) every update is on-policy and the clip bands change nothing.

        ## 4. Fixed vs adaptive on the same real step

        Two trainers from the same bundled model with the same seed sample the same rollouts, score the same
        IG and compute the same advantages; they differ only in the clip bands. With `num_iterations=2` the
        first pass is identical in both runs (nothing is clipped at $s = 1$), so both second passes see the
        same ratios, and any difference in what is clipped comes from the bands alone. The learning rate is
        3e-5, the order used for real models: one update then moves a turn's ratio by about the width of the
        band (with this tiny model's default 3e-4 most turns overshoot both bands and both clip the same way).
        """),
        code("""
        import tempfile

        questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
        tool = lab.bundled_search_tool()
        records = {}
        for name in ("a2tgpo", "a2tgpo_fixed_clip"):
            cfg = lab.preset(name, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS, num_iterations=2,
                             learning_rate=3e-5, seed=0, output_dir=tempfile.mkdtemp(prefix=f"a2tgpo_nb04_{name}_"))
            records[name] = lab.A2TGPOTrainer(cfg, train_examples=questions, tool=tool).step()
        adaptive, fixed = records["a2tgpo"], records["a2tgpo_fixed_clip"]
        same_rollouts = all(np.array_equal(a, b) for a, b in zip(adaptive.input_ids, fixed.input_ids))
        same_ratios = all(np.allclose(a, b, equal_nan=True) for a, b in zip(adaptive.ratio, fixed.ratio))
        print(f"same rollouts: {same_rollouts}; same second-pass ratios: {same_ratios}")
        print(f"{'':24s} {'fixed':>8s} {'adaptive':>9s}")
        for key in ("clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", "ratio/min", "ratio/max"):
            print(f"{key:24s} {fixed.metrics[key]:8.4f} {adaptive.metrics[key]:9.4f}")
        """),
        md(r"""
        The adaptive bands of every (rollout, turn), coloured by $c$; the dashed lines are the fixed band:
        """),
        code("show(viz.clip_range_figure(adaptive))"),
        md("Each model token's ratio against its turn's band (turn-level ratios: all tokens of a turn share one value):"),
        code("show(viz.ratio_figure(adaptive))"),
        md(r"""
        ### Where the two bands decide differently

        Every tool turn of the step as a point: its $\tilde I$ (x) and its turn ratio (y). The dashed lines are
        the fixed band, the solid curves the adaptive one, $1 \pm c(\tilde I)\,\varepsilon$. A turn with $A > 0$ (▲) is
        clipped when it is above the upper line, a turn with $A < 0$ (▼) when it is below the lower one; red and
        blue mark the turns the adaptive band clipped. The two methods disagree exactly for points between a
        dashed line and its curve: right of 0 the adaptive band is wider (a turn that gained information keeps
        its gradient longer), left of 0 narrower. Answer turns ($c = 1$) are left out.
        """),
        code("""
        import plotly.graph_objects as go


        def turn_decisions(record):
            \"\"\"{(rollout, turn): (turn ratio, clip flag)} for every turn with model tokens.\"\"\"
            decisions = {}
            for i in range(record.batch_size):
                model_tokens = np.asarray(record.loss_mask[i], dtype=bool)
                for k in np.unique(record.turn_ids[i][model_tokens]):
                    in_turn = model_tokens & (record.turn_ids[i] == k)
                    decisions[(i, int(k))] = (float(np.nanmean(record.ratio[i][in_turn])), int(record.clipped[i][in_turn][0]))
            return decisions


        fixed_turns, adaptive_turns = turn_decisions(fixed), turn_decisions(adaptive)
        tool_turns = [(i, k) for (i, k) in adaptive_turns if k <= adaptive.num_tool_turns[i]]
        cfg = adaptive.config
        grid = torch.linspace(-3, 3, 121)[:, None]
        c_grid = lab.adaptive_clip_factor(grid, cfg["clip_beta"], torch.ones(121, dtype=torch.long))[:, 0]
        low_grid, high_grid = lab.clip_bounds(c_grid, cfg["epsilon"], cfg["epsilon_high"])
        figure = go.Figure()
        for bound in (1 - cfg["epsilon"], 1 + cfg["epsilon_high"]):
            figure.add_hline(y=bound, line=dict(color="gray", dash="dash"))
        for curve, name in ((low_grid, "adaptive lower bound"), (high_grid, "adaptive upper bound")):
            figure.add_trace(go.Scatter(x=grid[:, 0], y=curve, mode="lines", name=name, line=dict(color="green")))
        colors = {0: "lightgray", 1: "#d62728", -1: "#1f77b4"}
        for sign, symbol in ((1, "triangle-up"), (-1, "triangle-down")):
            chosen = [(i, k) for (i, k) in tool_turns if np.sign(adaptive.advantages[i, k - 1]) == sign]
            figure.add_trace(go.Scatter(
                x=[adaptive.ig_norm[i, k - 1] for i, k in chosen], y=[adaptive_turns[(i, k)][0] for i, k in chosen],
                mode="markers", name=f"A {'>' if sign > 0 else '<'} 0",
                marker=dict(symbol=symbol, size=11, color=[colors[adaptive_turns[t][1]] for t in chosen],
                            line=dict(width=[3 if adaptive_turns[t][1] != fixed_turns[t][1] else 0.5 for t in chosen], color="black")),
                customdata=[[i, k] for i, k in chosen], hovertemplate="rollout %{customdata[0]}, turn %{customdata[1]}<br>Ĩ %{x:.3f}, ratio %{y:.5f}<extra></extra>"))
        spread = 4 * max(cfg["epsilon"], cfg["epsilon_high"])
        figure.update_layout(template="plotly_white", height=420, xaxis_title="normalized IG Ĩ of the turn",
                             yaxis=dict(title="turn ratio s", range=[1 - spread, 1 + spread]),
                             title="tool turns of the step: thick outline = fixed and adaptive decide differently")
        show(figure)

        names = {0: "kept", 1: "clipped high", -1: "clipped low"}
        print(f"turns clipped: fixed {sum(f != 0 for _, f in fixed_turns.values())}, "
              f"adaptive {sum(f != 0 for _, f in adaptive_turns.values())}, of {len(adaptive_turns)} turns")
        print(f"{'rollout':>7} {'turn':>4} {'Ĩ':>7} {'c':>7} {'A':>7} {'ratio':>8}   {'fixed':12s} {'adaptive':12s} text")
        for (i, k), (ratio, flag) in adaptive_turns.items():
            if flag != fixed_turns[(i, k)][1]:
                print(f"{i:7d} {k:4d} {adaptive.ig_norm[i, k - 1]:+7.3f} {adaptive.clip_factor[i, k - 1]:7.4f} "
                      f"{adaptive.advantages[i, k - 1]:+7.3f} {ratio:8.5f}   {names[fixed_turns[(i, k)][1]]:12s} {names[flag]:12s} "
                      f"{adaptive.turn_texts[i][k - 1][:40]}")
        """),
        md(r"""
        The band changes one turn's fate only near its edge, so in any single step few decisions differ; the
        effect accumulates over many steps and iterations, and it is systematic: informative turns are cut
        later, uninformative ones earlier.

        Load the real step into the explorer to see one turn's token ratios on the curves (pick a rollout and
        a turn; Ĩ, the sign of A, β and ε come from the record):
        """),
        code("display(viz.ClipExplorer(record=adaptive))"),
        md("And one rollout token by token, clipped tokens underlined (red: clipped high, blue: clipped low):"),
        code("""
        clipped_rollouts = [i for i in range(adaptive.batch_size) if np.any(adaptive.clipped[i] != 0)]
        display(viz.RolloutInspector(adaptive, rollout=clipped_rollouts[0] if clipped_rollouts else 0))
        """),
        md(r"""
        **Takeaways.** The adaptive band is a per-turn trust region: $c \in (1-\beta, 1+\beta)$, monotone in
        $\tilde I$, never a gradient path (it is a constant of the loss). With turn-level ratios, whole turns are
        clipped together and $\varepsilon$ must be small. Watch `clip_ratio/*` and `turn/{k}/clip_frac` in the
        dashboard; notebook 07 shows what a ratio blow-up looks like.
        """),
    ]


# --------------------------------------------------------------------------------------------- 05
def live_training():
    return [
        md(r"""
        # 05 · Live training: an A²TGPO run you can watch, pause, inspect and resume

        **What you'll learn**

        - the training loop, readable top to bottom in one method;
        - the live dashboard: training curves, per-step views (IG, groups, advantages, clip bands, ratios,
          rollouts), a step slider to go back, and pause / resume / stop buttons;
        - training in a background thread so the notebook stays responsive;
        - callbacks (here: one that pauses the run at a given step), and where the logs and checkpoints go.
        """),
        parameters(),
        code("""
        STEPS = 4 if SMOKE else 40
        PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)
        EVAL_EVERY, EVAL_PROMPTS = (2, 16) if SMOKE else (10, 200)
        PAUSE_AFTER_STEP = 1 if SMOKE else 5          # the callback below pauses the run after this step
        """),
        imports(torch=False),
        md(r"""
        ## 1. One step of the loop

        Rollout → probe → IG → advantages → clip bands → PPO update → record. This is the whole step:
        """),
        code("show_source(lab.A2TGPOTrainer.step)"),
        md(r"""
        ## 2. Start a run in the background

        `trainer.train_in_background()` runs `trainer.train()` in a thread and returns it, so this notebook's
        kernel stays free: the dashboard's buttons and slider answer while training runs. The dashboard
        never slows the loop down: its per-step callback only appends the record; a separate thread redraws at
        most every `update_interval` seconds, and only the visible tab.

        A callback is any object with some of `on_train_begin(trainer)`, `on_step_end(trainer, record)`,
        `on_evaluate(trainer, metrics)`, `on_train_end(trainer)`. This one pauses the run after a given step,
        the way you would press the pause button to look at something:
        """),
        code("""
        import tempfile
        import threading


        class PauseAfter:
            \"\"\"Pause the trainer when step `step` has finished, and tell the notebook.\"\"\"

            def __init__(self, step: int):
                self.step, self.reached = step, threading.Event()

            def on_step_end(self, trainer, record):
                if record.step == self.step:
                    trainer.pause()           # takes effect before the next step starts
                    self.reached.set()


        output_dir = tempfile.mkdtemp(prefix="a2tgpo_live_")
        cfg = lab.preset("a2tgpo", max_steps=STEPS, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         eval_steps=EVAL_EVERY, eval_num_prompts=EVAL_PROMPTS, save_steps=EVAL_EVERY, output_dir=output_dir)
        pauser = PauseAfter(PAUSE_AFTER_STEP)
        trainer = lab.A2TGPOTrainer(cfg, callbacks=[pauser])
        dashboard = viz.Dashboard(trainer, update_interval=1.0)
        display(dashboard)
        """),
        code("""
        thread = trainer.train_in_background()
        """),
        md(r"""
        ## 3. Paused: inspect the run while it waits

        The next cell waits until the callback has paused the run (in JupyterLab you could equally press
        **pause** on the dashboard). `pause()` lets the running step finish, with its evaluation and checkpoint
        when one is due, and holds the loop before the next step; records and history are safe to read at any
        time, paused or not.
        """),
        code("""
        while not pauser.reached.wait(timeout=1.0):
            if not thread.is_alive():
                raise RuntimeError("training ended before the pause step; see the error printed above")
        print(f"paused: {trainer.paused}; steps done: {len(trainer.records)}")
        record = trainer.records[-1]
        for key in ("reward", "num_turns/mean", "ig/mean", "ig/zero_std_group_frac", "clip_ratio/region_mean"):
            print(f"  {key:26s} {record.metrics[key]:.4f}")
        display(viz.RolloutInspector(record, rollout=int(np.argmax(record.num_tool_turns))))
        """),
        md(r"""
        While paused you can look at any kept step with the dashboard's slider (untick *follow latest*), open
        the *rollouts* tab, or build any figure from `trainer.records`. Then resume:
        """),
        code("""
        trainer.resume()
        """),
        md(r"""
        The next cell blocks until training ends. The dashboard keeps refreshing meanwhile, but the buttons
        need a free kernel: in JupyterLab, skip this cell if you want to press them (or press **stop**, which
        finishes the current step, saves a checkpoint and leaves `train()`).
        """),
        code("""
        thread.join()
        print(f"finished {trainer.global_step} steps")
        evals = [(row["step"], row["eval/em"]) for row in trainer.history if "eval/em" in row]
        print("greedy dev exact match during training (step, EM):", [(int(s), round(em, 3)) for s, em in evals])
        """),
        md("## 4. After the run: static figures, logs, checkpoints"),
        code("show(viz.training_curves_figure(trainer.history))"),
        code("show(viz.clip_fraction_figure(trainer.history))"),
        md(r"""
        Everything the dashboard showed is in the records; `viz.Dashboard.from_records(trainer.records)` rebuilds
        it offline, e.g. from records you pickled. On disk, `output_dir` holds `metrics.jsonl` (one line of
        metrics per step), `completions.jsonl` (every rollout with its IG and advantages), `eval.jsonl`,
        `config.json` and `checkpoint-<step>/` directories.
        """),
        code("""
        from pathlib import Path

        for path in sorted(Path(output_dir).iterdir()):
            print(path.name)
        """),
        md(r"""
        To continue a run later, point a new trainer at the same `output_dir` with
        `resume_from_checkpoint="latest"` and a larger `max_steps`: model, optimizer, scheduler, random state
        and history are restored, and the continued run sees exactly the batches the uninterrupted one would
        have seen.
        """),
        code("""
        resumed = lab.A2TGPOTrainer(cfg.replace(max_steps=STEPS + 1, resume_from_checkpoint="latest"))
        print(f"resumed at step {resumed.global_step} with {len(resumed.history)} history rows")
        """),
    ]


# --------------------------------------------------------------------------------------------- 06
def compare_and_ablate():
    return [
        md(r"""
        # 06 · Compare and ablate: GRPO vs IGPO vs A²TGPO, on the same budget

        **What you'll learn**

        - the presets, and what each of the three A²TGPO changes is;
        - how to run them on the same budget (same model, data, seeds, steps and evaluation questions);
        - how to read the result honestly: small runs are noisy, an exact match on a few hundred questions
          has a standard error of a few points, and seeds disagree.
        """),
        parameters(),
        code("""
        PRESETS = ["grpo", "igpo", "a2tgpo", "a2tgpo_pooled", "a2tgpo_no_rescale", "a2tgpo_fixed_clip"]
        STEPS = 1 if SMOKE else 20
        SEEDS = [0] if SMOKE else [0, 1]
        PROMPTS, GENERATIONS = (2, 4) if SMOKE else (8, 8)
        EVAL_PROMPTS = 8 if SMOKE else 300
        """),
        imports(torch=False, source=False),
        md(r"""
        ## 1. The presets

        | preset | IG | normalization | accumulation | clip |
        |---|---|---|---|---|
        | `grpo` | — | outcome z-score per prompt | outcome broadcast to all turns | fixed |
        | `igpo` | yes | pooled over all turns of the prompt | discounted sum, no rescale | fixed |
        | `a2tgpo` | yes | per (prompt, turn index) | discounted sum / √n | adaptive |
        | `a2tgpo_pooled` | yes | **pooled** | discounted sum / √n | adaptive |
        | `a2tgpo_no_rescale` | yes | per (prompt, turn index) | **no rescale** | adaptive |
        | `a2tgpo_fixed_clip` | yes | per (prompt, turn index) | discounted sum / √n | **fixed** |

        Each ablation switches one A²TGPO change off. A preset is only a set of config fields:
        """),
        code("""
        for name in PRESETS:
            print(f"{name:18s} {lab.PRESETS[name]}")
        """),
        md(r"""
        ## 2. Same budget for everyone

        Every run starts from the same bundled model, sees the same training questions in the same order
        (a function of the seed), takes `STEPS` steps of `PROMPTS × GENERATIONS` rollouts, and is evaluated
        greedily on the same dev questions. The untrained model's score is measured once: it is the same for
        all presets.
        """),
        code("""
        import tempfile

        tool = lab.bundled_search_tool()
        train_questions, dev_questions = lab.load_split("train"), lab.load_split("dev")[:EVAL_PROMPTS]
        model, tokenizer = lab.load_model_and_tokenizer(lab.preset("a2tgpo"))
        base_em = lab.evaluate_agent(model, tokenizer, dev_questions, tool, lab.preset("a2tgpo"))["eval/em"]
        print(f"untrained model: dev EM {base_em:.3f} on {len(dev_questions)} questions")

        results, histories = [], {}
        for name in PRESETS:
            for seed in SEEDS:
                cfg = lab.preset(name, seed=seed, max_steps=STEPS, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                                 eval_steps=10_000, save_steps=10_000, output_dir=tempfile.mkdtemp(prefix=f"a2tgpo_{name}_"))
                trainer = lab.A2TGPOTrainer(cfg, train_examples=train_questions, eval_examples=dev_questions, tool=tool)
                trainer.train()
                em = trainer.evaluate()["eval/em"]
                step_seconds = [row["time/step_s"] for row in trainer.history if "time/step_s" in row]
                results.append(dict(preset=name, seed=seed, em=em, seconds_per_step=float(np.median(step_seconds))))
                histories[(name, seed)] = list(trainer.history)
        """),
        md(r"""
        ## 3. The table, and how to read it
        """),
        code("""
        grpo_speed = np.mean([r["seconds_per_step"] for r in results if r["preset"] == "grpo"])   # median step time per run
        se = np.sqrt(base_em * (1 - base_em) / len(dev_questions))
        print(f"untrained EM {base_em:.3f}; standard error of one EM on {len(dev_questions)} questions ≈ {se:.3f}\\n")
        print(f"{'preset':18s} {'EM per seed':>24s} {'mean Δ vs untrained':>20s} {'step time vs grpo':>18s}")
        summary = {}
        for name in PRESETS:
            rows = [r for r in results if r["preset"] == name]
            ems = np.array([r["em"] for r in rows])
            summary[name] = ems
            per_seed = " ".join(f"{em:.3f}" for em in ems)
            speed = np.mean([r["seconds_per_step"] for r in rows]) / grpo_speed
            print(f"{name:18s} {per_seed:>24s} {ems.mean() - base_em:+20.3f} {speed:17.2f}×")
        """),
        md(r"""
        Before concluding anything:

        - **Noise of the measurement.** An exact match on $n$ questions is a proportion; its standard error is
          $\sqrt{p(1-p)/n}$, about 0.03 at $p = 0.4$, $n = 300$. Two presets whose means differ by less than about
          twice that are not distinguished by this run.
        - **Noise of training.** Different seeds see different questions and sample different rollouts; the
          spread between seeds of the same preset is the yardstick for differences between presets. With 2 seeds
          it is a rough one: use 3-5.
        - **Budget.** Equal steps is not equal compute: every estimator but GRPO pays for the IG probe (the last
          column). Compare at equal wall-clock time too when that is what matters to you.
        - **Small models, short runs.** The bundled model and 20 steps show the mechanics, not the paper's
          numbers. The smoke setting (1 step, 8 questions) only checks that the code runs: nothing can be read
          from it.

        Every seed's EM (dots), their mean (bar), and the untrained score with its ±2 standard errors (band):
        """),
        code("""
        import plotly.graph_objects as go

        figure = go.Figure()
        figure.add_hrect(y0=base_em - 2 * se, y1=base_em + 2 * se, fillcolor="rgba(0,0,0,0.08)", line_width=0)
        figure.add_hline(y=base_em, line=dict(color="black", dash="dash"), annotation_text="untrained ± 2 SE")
        figure.add_trace(go.Bar(x=PRESETS, y=[summary[n].mean() for n in PRESETS], name="mean over seeds", opacity=0.6))
        for seed in SEEDS:
            figure.add_trace(go.Scatter(x=PRESETS, y=[r["em"] for n in PRESETS for r in results if r["preset"] == n and r["seed"] == seed],
                                        mode="markers", marker=dict(size=10), name=f"seed {seed}"))
        figure.update_layout(template="plotly_white", height=380, yaxis_title="greedy dev exact match",
                             title=f"after {STEPS} steps of {PROMPTS}×{GENERATIONS} rollouts")
        show(figure)
        """),
        md(r"""
        **Play with it**: any logged metric over training, averaged over seeds, one line per preset (e.g.
        `reward`, `num_turns/mean`, `search_calls/mean`, `ig/zero_std_group_frac`, `clip_ratio/region_mean`).
        """),
        code("""
        import ipywidgets as widgets


        def curves(metric):
            \"\"\"One line per preset: `metric` at each training step, averaged over the seeds.\"\"\"
            figure = go.Figure()
            for name in PRESETS:
                per_seed = [[row.get(metric, np.nan) for row in histories[(name, seed)] if "time/step_s" in row] for seed in SEEDS]
                figure.add_trace(go.Scatter(x=list(range(STEPS)), y=np.nanmean(np.array(per_seed, dtype=float), axis=0),
                                            mode="lines+markers", name=name))
            figure.update_layout(template="plotly_white", height=360, xaxis_title="step", yaxis_title=metric,
                                 title=f"{metric}, mean over {len(SEEDS)} seed(s)")
            return figure


        metrics = sorted(k for k in histories[(PRESETS[0], SEEDS[0])][-1] if not k.startswith(("turn/", "eval/")))
        chooser = widgets.Dropdown(options=metrics, value="reward", description="metric")
        chosen = go.FigureWidget(curves("reward"))
        chooser.observe(lambda change: viz.sync_figure(chosen, curves(change["new"])), names="value")
        display(widgets.VBox([chooser, chosen]))
        """),
        md("The reward curves without widgets (they stay in a saved notebook):"),
        code('show(curves("reward"))'),
        md(r"""
        ## 4. Larger comparisons

        `benchmarks/compare_estimators.py` runs the same comparison from a terminal with more seeds and prints
        the table (EM before → after per seed, mean gain, step time relative to GRPO):

        ```bash
        python benchmarks/compare_estimators.py --presets grpo igpo a2tgpo a2tgpo_pooled a2tgpo_no_rescale a2tgpo_fixed_clip --seeds 0 1 2
        ```
        """),
    ]


# --------------------------------------------------------------------------------------------- 07
def debugging():
    return [
        md(r"""
        # 07 · Debugging an agentic RL run

        **What you'll learn**

        - the rollout inspector: one trajectory token by token, as the loss saw it;
        - how six common failure modes look in the metrics and the views, and what to do about each:

        | symptom | where it shows | usual cause | fix |
        |---|---|---|---|
        | no learning signal on many prompts | `frac_reward_zero_std`, `ig/zero_std_group_frac` | every rollout of a prompt got the same reward / did the same | more generations, T = 1 sampling, questions of the right difficulty; IG still gives signal |
        | tool output trained as if the model wrote it | inspector: observation tokens coloured as model tokens | a `loss_mask` / `turn_ids` bug | train only tokens with `turn_ids > 0`; check with the inspector |
        | loss spikes, policy collapses | `ratio/max`, `clip_ratio/*` | too large a step, stale ratios | lower LR, fewer `num_iterations`, `dual_clip`, turn-level ratio |
        | `ig/nonfinite_count` > 0 | the metric | a NaN/−inf probe score | dropped and counted, never trained on; check dtype and the gold answer |
        | the model never answers | `answer_rate`, `format_error_rate`, all rewards equal | no warm start, wrong chat template or stop token | SFT first; check `tokenizer.chat_template`, the EOS token |
        | turns cut in the middle | `end_reason` = `malformed` (unbalanced tags) | `max_new_tokens_per_turn` too small | raise it (real models need 256 or more) |
        """),
        parameters(),
        code("""
        PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)
        """),
        imports(html=True, show=False),
        code("""
        import dataclasses
        import tempfile
        from collections import Counter

        tool = lab.bundled_search_tool()
        questions = lab.load_split("train")
        cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb07_"))
        trainer = lab.A2TGPOTrainer(cfg, train_examples=questions, tool=tool)
        record = trainer.step()
        print(f"step {record.step}: end reasons {dict(Counter(record.end_reason))}")
        """),
        md(r"""
        ## 1. The rollout inspector

        Model tokens (the only ones trained, `loss_mask`) are coloured by their assistant turn; prompt and
        observation tokens are grey. Switch *colour by* to `advantage` to see what each token was pushed
        towards; underlined tokens were clipped. The table lists IG, Ĩ, A and c per turn; hover a token for its
        position, turn, advantage and ratio.
        """),
        code("""
        deepest = int(np.argmax(record.num_tool_turns))
        display(viz.RolloutInspector(record, rollout=deepest))
        """),
        md(r"""
        ## 2. Zero-std groups: prompts that teach nothing

        When all $G$ rollouts of a prompt get the same reward, $\tilde o_i = 0$ for all of them: GRPO has no
        signal there at all. A²TGPO still has one wherever the rollouts' IG differed at some turn.
        """),
        code("""
        flat = [int(q) for q in np.unique(record.prompt_index) if np.ptp(record.outcome_reward[record.prompt_index == q]) == 0]
        print(f"frac_reward_zero_std = {record.metrics['frac_reward_zero_std']:.2f}; prompts with one reward for all: {flat}")
        as_tensor = lambda x: torch.as_tensor(np.asarray(x))
        grpo = lab.compute_advantages(lab.preset("grpo"), as_tensor(record.ig), as_tensor(record.outcome_reward),
                                      as_tensor(record.prompt_index), as_tensor(record.num_tool_turns))
        for q in flat:
            rows = np.nonzero(record.prompt_index == q)[0]
            grpo_signal = np.nanmax(np.abs(grpo.advantages.numpy()[rows]))
            a2tgpo_signal = np.nanmax(np.abs(record.advantages[rows]))
            print(f"prompt {q}: reward {record.outcome_reward[rows[0]]:+.0f} for all; largest |A|: GRPO {grpo_signal:.3f}, "
                  f"A²TGPO {a2tgpo_signal:.3f}")
        print(f"IG groups with zero spread: {record.zero_std_group_frac:.2f} (notebook 02)")
        """),
        md(r"""
        ## 3. Mask errors: a tool response leaking into the loss

        Only tokens the model generated may be trained. The classic bug marks *everything after the prompt* as
        trainable, observations included: the model is then taught to write the search results itself, i.e. to
        hallucinate them. Two variants, built here on purpose from a real rollout:

        Per-turn values reach the tokens through one function; every model token must belong to a turn:
        """),
        code("show_source(lab.broadcast_to_tokens)"),
        md(r"""
        **(a) the loss mask covers observations, turn ids do not.** `broadcast_to_tokens` refuses: a trained
        token must belong to an assistant turn.
        """),
        code("""
        i = deepest
        per_turn = torch.as_tensor(record.advantages[i:i + 1])
        turn_ids = np.asarray(record.turn_ids[i])
        first_model_token = int(np.argmax(record.loss_mask[i]))
        everything_after_prompt = np.arange(turn_ids.size) >= first_model_token
        try:
            lab.broadcast_to_tokens(per_turn, torch.as_tensor(turn_ids)[None], torch.as_tensor(everything_after_prompt)[None])
        except ValueError as error:
            print("ValueError:", error)
        """),
        md(r"""
        **(b) observations are also labelled with the turn before them.** Now nothing complains: every
        observation token silently receives its turn's advantage. The inspector shows it at once (the
        `<information>` text is coloured like model tokens), and a one-line invariant catches it: no trained
        token may sit inside an `<information> … </information>` span.
        """),
        code("""
        carried_turn_ids = np.where(everything_after_prompt, np.maximum.accumulate(turn_ids), 0)
        leaked_advantage = lab.broadcast_to_tokens(per_turn, torch.as_tensor(carried_turn_ids)[None],
                                                   torch.as_tensor(everything_after_prompt)[None])[0]


        def with_rollout(record, i, **fields):
            \"\"\"A copy of the record whose rollout i has other per-token arrays.\"\"\"
            changed = {}
            for name, value in fields.items():
                rows = list(getattr(record, name))
                rows[i] = value
                changed[name] = rows
            return dataclasses.replace(record, **changed)


        def trained_observation_tokens(record, i):
            \"\"\"Positions of trained tokens inside an <information> … </information> span (must be none).

            A span is closed by </information> and opened by the last <information> before it (the system
            prompt also mentions the tag, without closing it).\"\"\"
            leaked, opened = [], None
            for position, token in enumerate(record.tokens[i]):
                if token == "<information>":
                    opened = position
                elif token == "</information>" and opened is not None:
                    leaked += [p for p in range(opened, position + 1) if record.loss_mask[i][p]]
                    opened = None
            return leaked


        broken = with_rollout(record, i, loss_mask=everything_after_prompt, turn_ids=carried_turn_ids,
                              token_advantage=leaked_advantage.numpy())
        print(f"trained observation tokens: correct record {len(trained_observation_tokens(record, i))}, "
              f"broken one {len(trained_observation_tokens(broken, i))}")
        display(HTML(viz.rollout_html(broken, i)))
        """),
        md(r"""
        ## 4. Ratio blow-ups

        PPO's clip bounds the ratio only in the direction the advantage pushes. For $A < 0$ a token whose
        probability *rose* a lot (ratio 20) stays on the unclipped branch, and its loss and gradient grow with
        the ratio. Three ways to hold it, on one toy turn of 4 tokens where one token became $e^3 \approx 20$
        times more likely:
        """),
        code("""
        old_logprobs = torch.full((1, 4), -1.0)
        logprobs = old_logprobs.clone()
        logprobs[0, 2] += 3.0
        logprobs.requires_grad_(True)
        one_turn, all_model = torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)
        advantage = torch.full((1, 4), -1.0)
        settings = [("token ratio, ε 0.2/0.28", dict(ratio_level="token"), (0.2, 0.28)),
                    ("token ratio + dual clip 3", dict(ratio_level="token", dual_clip=3.0), (0.2, 0.28)),
                    ("turn ratio, ε 3e-3/4e-3", dict(ratio_level="turn"), (3e-3, 4e-3))]
        for label, knobs, (eps_low, eps_high) in settings:
            loss, out = lab.policy_loss(logprobs, old_logprobs, advantage, one_turn, all_model,
                                        torch.full((1, 4), 1 - eps_low), torch.full((1, 4), 1 + eps_high), **knobs)
            grad, = torch.autograd.grad(loss, logprobs)
            print(f"{label:27s} ratios {np.round(out.ratio[0].numpy(), 2)}  clipped {out.clipped[0].tolist()}  "
                  f"loss {float(loss.detach()):6.3f}  |grad| {grad.abs().max():.3f}")
        print(f"\\nthis run's step: ratio/max {record.metrics['ratio/max']:.4f}, clip_ratio/region_mean "
              f"{record.metrics['clip_ratio/region_mean']:.4f}")
        """),
        md(r"""
        The turn-level ratio averages the turn's log-ratios (a whole turn moves together and a single token
        cannot dominate), dual clip caps the loss of negative-advantage tokens at $c_\text{dual}\,|A|$. In a
        real run watch `ratio/max` and `clip_ratio/*` in the dashboard; a sudden jump means the update was too
        large (lower the learning rate or `num_iterations`, keep `max_grad_norm`).

        ## 5. NaN information gain: counted and dropped

        A probe score can come out NaN or −∞ (an overflow in half precision, an answer that tokenizes
        strangely). Such IG terms are dropped, counted in `ig/nonfinite_count`, and treated as 0 in the
        accumulation; the step never crashes. In the probability mode $p = 0$ is a legitimate value, but its
        log-difference is not:
        """),
        code("""
        nan = float("nan")
        probe_scores = torch.tensor([[-4.0, nan, -0.5, -0.1, nan],            # ℓ_t, t = 0..3 (column 4: past K)
                                     [-4.0, -2.0, float("-inf"), -3.0, nan]])
        three_searches = torch.tensor([3, 3])                                  # K = 3 searches, then the answer turn
        for mode in ("prob", "logprob"):
            ig, _, dropped = lab.information_gain(probe_scores, three_searches, mode=mode)
            print(f"{mode:8s} dropped {dropped}, IG [B, T]:\\n{np.array2string(ig.numpy(), precision=4)}")
        ig, _, _ = lab.information_gain(probe_scores, three_searches)
        result = lab.compute_advantages(lab.preset("a2tgpo"), ig, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), three_searches)
        print(f"Ĩ:\\n{np.array2string(result.ig_norm.numpy(), precision=3)}")
        print(f"A (finite: the dropped terms count as 0):\\n{np.array2string(result.advantages.numpy(), precision=3)}")
        print(f"this run's step: ig/nonfinite_count = {record.metrics['ig/nonfinite_count']:.0f}")
        """),
        md(r"""
        ## 6. A model that never answers

        RL cannot start from a policy that never produces a parsable answer: every rollout gets the format
        penalty, all rewards in a group are equal, and every advantage is 0. Here is an untrained model (random
        weights, same tokenizer) in the same trainer:
        """),
        code("""
        untrained = lab.build_tiny_qwen(trainer.tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        cold = lab.A2TGPOTrainer(cfg, model=untrained, tokenizer=trainer.tokenizer, train_examples=questions, tool=tool).step()
        print("end reasons:", dict(Counter(cold.end_reason)))
        for key in ("answer_rate", "format_error_rate", "reward", "frac_reward_zero_std", "advantages/std"):
            print(f"  {key:20s} {cold.metrics[key]:.3f}")
        print("a turn it wrote:", cold.turn_texts[0][0][:120])
        """),
        md(r"""
        The fix is a supervised warm start on demonstrations of the protocol (`scripts/build_tiny_model.py` does
        it for the bundled model); for a real chat model, check that the chat template renders the protocol and
        that the end-of-turn token is the EOS the rollout stops on.

        A related failure: turns cut in the middle because the per-turn token cap is too small. They end
        as `malformed` (an unclosed tag), so they look like a format problem of the model. Same model, same
        questions, `max_new_tokens_per_turn=3`:
        """),
        code("""
        capped = lab.generate_rollouts(trainer.model, trainer.tokenizer, questions[:PROMPTS], tool,
                                       cfg.replace(max_new_tokens_per_turn=3), num_generations=2)
        print("end reasons:", dict(Counter(capped.end_reason)))
        print("why:", dict(Counter(actions[-1].content for actions in capped.actions if actions[-1].kind == "malformed")))
        print("a cut turn:", capped.turn_texts[0][-1])
        """),
    ]


# --------------------------------------------------------------------------------------------- 08
def single_gpu():
    return [
        md(r"""
        # 08 · One GPU: a real Hugging Face model with LoRA and 4-bit weights

        **What you'll learn**

        - what changes between the bundled tiny model and a real chat model (the config fields, and why);
        - where the memory of an A²TGPO step goes, and an estimate for your model before you start;
        - loading with LoRA and 4-bit NF4 weights, and the reference policy that costs no memory
          (the same model with its adapters switched off);
        - a short run with its step time and peak memory, and what to expect on a GPU.

        In the smoke setting, and on a machine without a GPU, this notebook runs the same code on the bundled
        tiny model **on the CPU** (bitsandbytes' 4-bit weights work there, saving memory but not time). On a GPU
        with `SMOKE = False` it trains `MODEL_ID`.
        """),
        parameters("""
        MODEL_ID = "Qwen/Qwen3-1.7B"   # a Hub id, or a local directory with config.json, weights and a chat template
        """),
        code("""
        import torch

        ON_GPU = torch.cuda.is_available()
        MODEL = MODEL_ID if ON_GPU and not SMOKE else "bundled"
        STEPS = 2 if SMOKE else (10 if ON_GPU else 4)     # 4-bit on a CPU is slow: ~30 s per step of 64 rollouts
        PROMPTS, GENERATIONS = (2, 4) if SMOKE else (8, 8)
        print(f"GPU: {torch.cuda.get_device_name() if ON_GPU else 'none'}; training {MODEL!r} for {STEPS} steps")
        """),
        imports(torch=False),
        md(r"""
        ## 1. What to change for a real model

        | field | tiny-model default | real model (start here) | why |
        |---|---|---|---|
        | `use_peft` | `False` | `True` | adapters train in MB; the frozen base doubles as the reference policy |
        | `load_in_4bit` | `False` | `True` from ~7 B or on a 16-24 GB card | NF4 base weights, ¼ of bf16's memory for the linear layers |
        | `bf16` | `False` | `True` (Ampere or newer) | half the memory of float32 for weights and activations |
        | `gradient_checkpointing` | `False` | `True` | recompute activations in the backward pass: less memory, one extra forward |
        | `learning_rate` | 3e-4 | 1e-5 … 5e-5 | the default is for a 1 M-parameter model |
        | `max_new_tokens_per_turn` | 32 | 256 - 512 | real models think aloud before a `<search>` |
        | `max_completion_length` | 384 | 2048 - 4096 | everything after the prompt, observations included |
        | `max_observation_tokens` | 64 | 256 - 512 | BPE passages are many more tokens than words |
        | `gradient_accumulation_steps` | 1 | 4 - 16 | the micro-batch of the update sets the activation memory |

        The estimator, normalization, clipping and the turn-level $\varepsilon$ carry over unchanged.
        `docs/gpu.md` has the full guide (install, data files, resume, evaluation of a checkpoint).
        """),
        code("""
        import tempfile

        real_model = MODEL != "bundled"
        real_settings = dict(learning_rate=2e-5, max_new_tokens_per_turn=256, max_completion_length=2048,
                             max_observation_tokens=512, gradient_accumulation_steps=8) if real_model else {}
        cfg = lab.preset("a2tgpo", model_name_or_path=MODEL, use_peft=True, lora_r=16, lora_alpha=32, load_in_4bit=True,
                         bf16=ON_GPU, gradient_checkpointing=ON_GPU, max_steps=STEPS, num_prompts_per_step=PROMPTS,
                         num_generations=GENERATIONS, eval_steps=10_000, save_steps=10_000,
                         output_dir=tempfile.mkdtemp(prefix="a2tgpo_gpu_"), **real_settings)
        model, tokenizer = lab.load_model_and_tokenizer(cfg)
        print(lab.trainable_parameters_summary(model))
        """),
        md(r"""
        ## 2. Where the memory goes

        For $N$ = prompts × generations rollouts of up to $L$ tokens:

        1. **weights**: 2 bytes per parameter in bf16; ½ byte per linear weight in NF4 (the embedding stays
           unquantized, and is up-cast to float32 for training);
        2. **rollout KV cache** (no grad): $N \cdot L \cdot 2 \cdot \text{layers} \cdot \text{kv heads} \cdot \text{head dim} \cdot 2$ bytes;
        3. **the update's logits**: $(N / \text{micro-batches}) \cdot L \cdot \text{vocab} \cdot 4$ bytes, and their gradient: usually
           the peak, cut by `gradient_accumulation_steps`;
        4. **LoRA and AdamW state**: ≈ 16 bytes per trainable parameter, tens of MB.

        The estimate for the loaded model and this config:
        """),
        code("""
        config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
        rollouts = cfg.num_prompts_per_step * cfg.num_generations
        length = cfg.max_completion_length + 128              # + the prompt, roughly
        micro_batch = max(1, rollouts // (cfg.num_mini_batches * cfg.gradient_accumulation_steps))
        gib = 2 ** 30
        print(f"{config.model_type}: {config.num_hidden_layers} layers, vocab {config.vocab_size:,}")
        print(f"rollout KV cache:  {rollouts} × {length} tokens × {kv_bytes_per_token / 1024:.1f} KiB = "
              f"{rollouts * length * kv_bytes_per_token / gib:.3f} GiB")
        print(f"update logits:     {micro_batch} × {length} tokens × vocab × 4 B = "
              f"{micro_batch * length * config.vocab_size * 4 / gib:.3f} GiB (× ~2 with their gradient)")
        """),
        md(r"""
        ## 3. The reference policy is the same model with its adapters off

        LoRA's update starts at zero, so before training the policy and the reference agree exactly; after
        training the policy has moved and the reference has not. `lab.disabled_adapters(model)` is the
        switch (a KL term, `beta > 0`, uses it: one extra no-grad forward pass, no second copy of the model).
        """),
        code("show_source(lab.disabled_adapters)"),
        code("""
        device = next(model.parameters()).device
        batch = tokenizer([q.question for q in lab.load_split("dev")[:4]], return_tensors="pt", padding=True).to(device)


        def policy_and_reference():
            with torch.no_grad():
                policy = lab.token_logprobs(model, batch["input_ids"], batch["attention_mask"]).logprobs
                with lab.disabled_adapters(model):
                    reference = lab.token_logprobs(model, batch["input_ids"], batch["attention_mask"]).logprobs
            return policy, reference


        policy, reference_before = policy_and_reference()
        print(f"before training: max |log π_θ − log π_ref| = {float((policy - reference_before).abs().max()):.2e}")
        """),
        md("## 4. A short run: step time and peak memory"),
        code("""
        import resource
        import time

        if ON_GPU:
            torch.cuda.reset_peak_memory_stats()
        trainer = lab.A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
        step_times = [row["time/step_s"] for row in trainer.history if "time/step_s" in row]
        print(f"{len(step_times)} steps in {elapsed:.1f} s; mean step {np.mean(step_times):.2f} s")
        if ON_GPU:
            print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        else:
            print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        policy, reference = policy_and_reference()
        print(f"after training: max |log π_θ − log π_ref| = {float((policy - reference).abs().max()):.2e}; "
              f"the reference moved by {float((reference - reference_before).abs().max()):.2e}")
        """),
        code("show(viz.training_curves_figure(trainer.history))"),
        md(r"""
        ## 5. What to expect on a GPU

        - **Speed.** Generation dominates: every turn is a batched decode over all rollouts, then the probe
          costs about one more forward pass over each rollout, then the update is one forward + backward per
          micro-batch (two forwards with gradient checkpointing). On a CPU, 4-bit only saves memory: the
          bitsandbytes CPU path dequantizes on the fly and is slower than float32.
        - **Memory.** The peak is about weights + max(rollout KV cache, one micro-batch's logits and their
          gradient). For Qwen3-1.7B in 4-bit with 64 rollouts × 2048 tokens, docs/gpu.md estimates ≈ 14 GiB of
          KV cache and ≈ 9 GiB of logits per micro-batch of 8: comfortable on an 80 GB card, tight on 24 GB
          (raise `gradient_accumulation_steps`, shorten `max_completion_length`). For models up to ~3 B on a
          large GPU, bf16 + LoRA without 4-bit is often faster: the float32 embedding is a big share of a small
          model's memory and every 4-bit matmul pays for dequantization.
        - **Learning.** Start from an instruction-tuned model that follows the search protocol in a few-shot
          prompt, check `answer_rate` in the first steps (notebook 07), and use a learning rate around 2e-5.
        - **Saving.** A checkpoint's `policy/` directory holds only the LoRA adapter and names its base model, so
          it is itself a `model_name_or_path` for `a2tgpo-lab eval`.

        The same run from a terminal:

        ```bash
        a2tgpo-lab train --preset a2tgpo --model_name_or_path Qwen/Qwen3-1.7B --use_peft --load_in_4bit --bf16 \\
          --gradient_checkpointing --learning_rate 2e-5 --max_new_tokens_per_turn 256 --max_completion_length 2048 \\
          --max_observation_tokens 512 --gradient_accumulation_steps 8 --max_steps 200
        ```
        """),
    ]


# --------------------------------------------------------------------------------------------- writing
NOTEBOOKS = {
    "00_quickstart": quickstart,
    "01_information_gain": information_gain,
    "02_turn_group_normalization": turn_group_normalization,
    "03_variance_rescaling": variance_rescaling,
    "04_adaptive_clipping": adaptive_clipping,
    "05_live_training": live_training,
    "06_compare_and_ablate": compare_and_ablate,
    "07_debugging": debugging,
    "08_single_gpu": single_gpu,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name``: its cells with stable ids, no outputs, and a Python 3 kernel."""
    notebook = new_notebook(cells=NOTEBOOKS[name]())
    for number, cell in enumerate(notebook.cells):
        cell.id = f"{name[:2]}-{number:02d}"
        if cell.cell_type == "code":
            compile(cell.source, f"{name}.ipynb cell {number}", "exec")   # a syntax error fails here, not in CI
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str]) -> None:
    chosen = [name for name in NOTEBOOKS if not argv or name[:2] in argv]
    if argv and not chosen:
        raise SystemExit(f"no notebook numbered {argv}; choose from {[name[:2] for name in NOTEBOOKS]}")
    NOTEBOOK_DIR.mkdir(exist_ok=True)
    for name in chosen:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        nbformat.write(build(name), path)
        print(f"wrote {path.relative_to(NOTEBOOK_DIR.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
