"""A rule with a directory output (a tree artifact) holding symlinks too."""

def _file_tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        inputs = [ctx.file.src],
        arguments = [out.path, ctx.file.src.path],
        command = """
set -eu
d="$1"
mkdir -p "$d/nested/deeper" "$d/sibling" "$d/emptydir"
cp "$2" "$d/copied.txt"
echo top > "$d/top.txt"
echo leaf > "$d/nested/deeper/leaf.txt"
: > "$d/empty.txt"
echo x > "$d/sibling/x.txt"
printf 'unicode\\n' > "$d/ünïcödé.txt"
printf 'space\\n' > "$d/name with space.txt"
printf '#!/bin/sh\\necho from-tree\\n' > "$d/run.sh"
chmod +x "$d/run.sh"
ln -s top.txt "$d/link_to_top.txt"
ln -s ../../top.txt "$d/nested/deeper/up_link.txt"
""",
        mnemonic = "FileTree",
    )
    return [DefaultInfo(
        files = depset([out]),
        runfiles = ctx.runfiles(files = [out]),
    )]

file_tree = rule(
    implementation = _file_tree_impl,
    attrs = {"src": attr.label(allow_single_file = True)},
)
