"""The build machine: torch, iree-turbine, iree-compile, CMake + Ninja (`build_sd[build]`).

config -> model/ (torch) -> export -> compile -> validate -> bundle -> deploy (pack/push), and
the `build` pipeline that chains them after the planner. May import the runtime (validate and
bundle load modules) and the planner; nothing here is imported by the board side.
Named builder/, not build/: a folder called build/ is build output to tools and to common
.gitignore templates (GitHub's Python one ignores build/ at any depth), which would drop it.
"""
