"""Shell completion: scripts for bash and zsh, and the candidates both they and kubectl ask for.

`kubectl kiln <TAB>` is completed by kubectl itself (1.26+), which runs `kubectl_complete-kiln` from PATH
with the words typed so far and reads candidates in Cobra's format: one per line, then `:<directive>`
(4: no file names; 0: the shell's default, file names). The scripts printed by `completion bash|zsh`
complete `kubectl-kiln ...` typed directly, through the same hidden `__complete` command.
"""

from __future__ import annotations

from typing import Callable, Iterable

COMMANDS = ("runs", "history", "diff", "promote", "predict", "completion")
STAGES = ("None", "Staging", "Production", "Archived")
GLOBAL_FLAGS = ("-n", "--namespace", "--kubeconfig", "--context", "-o", "--output")
FLAGS = {"runs": ("--s3-endpoint", "--artifact-root"), "promote": ("--to", "--reason", "--dry-run"),
         "predict": ("-f", "--filename", "--url", "--probabilities", "--model"), "history": (), "diff": (), "completion": ()}
# What a positional argument names, per command and position.
POSITIONAL = {"runs": ("trainingpipeline",), "history": ("model",), "diff": ("modelversion", "modelversion"),
              "promote": ("modelversion",), "predict": ("inferenceservice",), "completion": ("shell",)}
VALUE_FLAGS = {"-n", "--namespace", "--kubeconfig", "--context", "-o", "--output", "--s3-endpoint",
               "--artifact-root", "--to", "--reason", "-f", "--filename", "--url", "--model"}
NO_FILES, FILES = ":4", ":0"


def candidates(words: list[str], names: Callable[[str, str | None], Iterable[str]]) -> tuple[list[str], str]:
    """(candidates, directive) for the last of `words` (the partial word; "" after a space).
    `names(what, namespace)` lists object names; it may fail, which offers nothing."""
    *done, partial = words or [""]
    previous = done[-1] if done else None
    namespace = next((done[i + 1] for i, w in enumerate(done[:-1]) if w in ("-n", "--namespace")), None)

    def offer(values: Iterable[str]) -> tuple[list[str], str]:
        return sorted({v for v in values if v.startswith(partial)}), NO_FILES

    if previous in ("-o", "--output"):
        return offer(("table", "json", "yaml"))
    if previous == "--to":
        return offer(STAGES)
    if previous in ("-f", "--filename", "--kubeconfig"):
        return [], FILES
    if previous in ("-n", "--namespace"):
        return offer(_safe(names, "namespace", None))
    if previous in VALUE_FLAGS:
        return [], NO_FILES
    positional = [w for i, w in enumerate(done) if not w.startswith("-") and not (i and done[i - 1] in VALUE_FLAGS)]
    if not positional:
        return offer(COMMANDS if not partial.startswith("-") else GLOBAL_FLAGS)
    command, args = positional[0], positional[1:]
    if partial.startswith("-"):
        return offer(GLOBAL_FLAGS + FLAGS.get(command, ()))
    slots = POSITIONAL.get(command, ())
    if len(args) >= len(slots):
        return [], NO_FILES
    what = slots[len(args)]
    if what == "shell":
        return offer(("bash", "zsh"))
    return offer(_safe(names, what, namespace))


def _safe(names, what, namespace) -> list[str]:
    try:
        return list(names(what, namespace))
    except Exception:  # noqa: BLE001 - completion must never print an error into the user's line
        return []


BASH = r'''# bash completion for kubectl-kiln (`kubectl kiln` itself is completed by kubectl: kubectl_complete-kiln)
_kubectl_kiln() {
    local cur out directive
    cur="${COMP_WORDS[COMP_CWORD]}"
    out=$(kubectl-kiln __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return
    directive=${out##*:}
    out=$(printf '%s\n' "$out" | sed '$d')
    if [ "$directive" = "0" ] && [ -z "$out" ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$out" -- "$cur"))
    fi
}
complete -F _kubectl_kiln kubectl-kiln
'''

ZSH = r'''#compdef kubectl-kiln
# zsh completion for kubectl-kiln (`kubectl kiln` itself is completed by kubectl: kubectl_complete-kiln)
_kubectl_kiln() {
    local -a lines
    local directive
    lines=("${(@f)$(kubectl-kiln __complete "${words[@]:1:$((CURRENT-1))}" 2>/dev/null)}")
    directive=${lines[-1]#:}
    lines=("${(@)lines[1,-2]}")
    if [[ $directive == 0 && ${#lines} -eq 0 ]]; then
        _files
    else
        compadd -- "${lines[@]}"
    fi
}
compdef _kubectl_kiln kubectl-kiln
'''


def script(shell: str) -> str:
    return {"bash": BASH, "zsh": ZSH}[shell]
