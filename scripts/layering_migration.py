# ruff: noqa: E501
"""ONE-TIME MIGRATION for issue 17 (delete once main is migrated): Issue 17,
                                    mechanical part: move modules to their layer, prefix every import with curtaild.

Idempotent: run on a tree at any state (already-prefixed imports are left alone).
Usage: python layering.py REPO
"""
import re
import subprocess
import sys
from pathlib import Path

repo = Path(sys.argv[1])
PKGS = ("controller", "drivers", "policies", "emulator", "core")
MOVES = {
    "controller.snapshot": "core.snapshot",
    "controller.economics": "core.economics",
    "controller.bounds": "core.bounds",
    "controller.switching": "core.switching",
    "emulator.models": "core.models",
    "drivers.nameplate": "core.nameplate",
    "controller.secret": "drivers.secret",
    "controller.credentials_config": "drivers.credentials_config",
}

def git(*args):
    subprocess.run(["git", "-C", str(repo), *args], check=True)

(repo / "core").mkdir(exist_ok=True)
init = repo / "core" / "__init__.py"
if not init.exists():
    init.write_text('"""The domain core: readings, snapshots, commands, directives, economics and the machine\n'
                    'model catalogue. No I/O and no orchestration: drivers, policies, the controller, the\n'
                    'backtest and the emulator all import it, and it imports none of them\n'
                    '(.importlinter)."""\n')
    git("add", "core/__init__.py")
for old, new in MOVES.items():
    src = repo / (old.replace(".", "/") + ".py")
    dst = repo / (new.replace(".", "/") + ".py")
    if src.exists() and not dst.exists():
        git("mv", str(src.relative_to(repo)), str(dst.relative_to(repo)))

def remap(mod: str) -> str:
    for old, new in MOVES.items():
        if mod == old or mod.startswith(old + "."):
            return new + mod[len(old):]
    return mod

PKG = "|".join(PKGS)
FROM = re.compile(rf"^(\s*)from\s+((?:{PKG})(?:\.[\w.]+)?)\s+import\s+(.*)$")
IMPORT = re.compile(rf"^(\s*)import\s+((?:{PKG})(?:\.[\w.]+)?)(\s+as\s+\w+)?\s*$")

def fix_from(m: re.Match) -> str:
    indent, mod, rest = m.group(1), m.group(2), m.group(3)
    mod = remap(mod)
    names = rest.strip()
    simple = re.fullmatch(r"[\w\s,]+(#.*)?", names) and "(" not in names
    if simple:
        comment = ""
        if "#" in names:
            names, comment = names.split("#", 1)
            comment = "  #" + comment
        parts = [n.strip() for n in names.split(",") if n.strip()]
        stay, moved = [], {}
        for n in parts:
            base = n.split(" as ")[0].strip()
            full = f"{mod}.{base}"
            if remap(full) != full:
                newmod, newname = remap(full).rsplit(".", 1)
                alias = n.split(" as ")[1].strip() if " as " in n else None
                moved.setdefault(newmod, []).append(
                    newname + (f" as {alias}" if alias else ("" if newname == base else f" as {base}")))
            else:
                stay.append(n)
        lines = []
        if stay:
            lines.append(f"{indent}from curtaild.{mod} import {', '.join(stay)}{comment}")
        for nm, ns in moved.items():
            lines.append(f"{indent}from curtaild.{nm} import {', '.join(ns)}")
        return "\n".join(lines)
    return f"{indent}from curtaild.{mod} import {rest}"

STRINGS = [
    (re.compile(rf'(["\'])-m\1(,\s*)(["\'])((?:{PKG})\.[\w.]+)\3'),
     lambda m: f'{m.group(1)}-m{m.group(1)}{m.group(2)}{m.group(3)}curtaild.{remap(m.group(4))}{m.group(3)}'),
    (re.compile(rf'(["\'])((?:{PKG})\.[\w.]+):(\w+)\1'),
     lambda m: f'{m.group(1)}curtaild.{remap(m.group(2))}:{m.group(3)}{m.group(1)}'),
    (re.compile(r'(["\'])emulator\.families\.'),
                    lambda m: f'{m.group(1)}curtaild.emulator.families.'),
]

def rewrite_py(text: str) -> str:
    out = []
    for line in text.split("\n"):
        m = FROM.match(line)
        if m:
            line = fix_from(m)
        else:
            m = IMPORT.match(line)
            if m:
                line = f"{m.group(1)}import curtaild.{remap(m.group(2))}{m.group(3) or ''}"
        for rx, fn in STRINGS:
            line = rx.sub(fn, line)
        out.append(line)
    return "\n".join(out)

PATHS = {old.replace(".", "/") + ".py": new.replace(".", "/") + ".py" for old, new in MOVES.items()}

def rewrite_doc(text: str) -> str:
    text = "\n".join(rewrite_py_line_in_doc(line) for line in text.split("\n"))
    for old, new in PATHS.items():
        text = re.sub(rf"(?<![\w/]){re.escape(old)}", new, text)
    return text

def rewrite_py_line_in_doc(line: str) -> str:
    m = FROM.match(line)
    if m:
        return fix_from(m)
    m = IMPORT.match(line)
    if m:
        return f"{m.group(1)}import curtaild.{remap(m.group(2))}{m.group(3) or ''}"
    return line

files = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard"],
                       capture_output=True, text=True, check=True).stdout.split()
for rel in files:
    p = repo / rel
    if not p.is_file() or rel.startswith((".venv", "state/")):
        continue
    if rel.endswith(".py"):
        t = p.read_text()
        n = rewrite_py(t)
        # `import controller.daemon` then `controller.daemon.x`: the uses follow the import
        for mod in re.findall(rf"^\s*import ((?:{PKG})\.[\w.]+)\s*$", t, re.M):
            n = re.sub(rf"(?<![\w.'\"/]){re.escape(mod)}\b", "curtaild." + remap(mod), n)
            n = n.replace("import curtaild.curtaild.", "import curtaild.")
        for old, new in PATHS.items():  # paths named in comments and docstrings
            n = re.sub(rf"(?<![\w/]){re.escape(old)}", new, n)
    elif rel.endswith((".md", ".toml", ".sh", ".service", ".txt", ".cfg", ".ini")) and rel != "pyproject.toml":
        t = p.read_text()
        n = rewrite_doc(t)
    else:
        continue
    if n != t:
        p.write_text(n)
print("ok")

# Lines the longer names pushed past 100 characters: break at the last ", " that fits,
# continuing under the opening bracket (the style of the surrounding code).
for rel in files:
    p = repo / rel
    if not rel.endswith(".py") or not p.is_file() or rel.startswith(".venv"):
        continue
    lines = p.read_text().split("\n")
    changed = False
    out = []
    for line in lines:
        if len(line) > 100 and "curtaild." in line and not line.lstrip().startswith(("from",
               "import", "#")):
            cut = line.rfind(", ", 0, 99)
            opening = line.find("[")
            if opening < 0 or opening > cut:
                opening = line.find("(")
            if cut > 0 and 0 <= opening < cut:
                out.append(line[:cut + 1])
                out.append(" " * (opening + 1) + line[cut + 2:])
                changed = True
                continue
        out.append(line)
    if changed:
        p.write_text("\n".join(out))
print("wrapped")
