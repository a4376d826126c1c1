"""A rule whose output is a symlink, created by an action (not by Bazel)."""

def _dangling_symlink_impl(ctx):
    # declare_symlink needs --experimental_allow_unresolved_symlinks in
    # Bazel 4; ctx.actions.symlink would be created by Bazel itself, locally.
    out = ctx.actions.declare_symlink(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        arguments = [ctx.attr.target, out.path],
        command = 'ln -s "$1" "$2"',
        mnemonic = "MakeSymlink",
    )
    return [DefaultInfo(files = depset([out]))]

dangling_symlink = rule(
    implementation = _dangling_symlink_impl,
    attrs = {"target": attr.string(mandatory = True)},
)
