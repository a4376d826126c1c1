"""worker_compile: an action that Bazel may run on a persistent worker.

Its tool is internal/workerproto/testworker, which e2e/persistent_test.go
builds and copies to tools/testworker before each build. Every action line is
Bazel's persistent worker shape: the tool, then one @param file (always, in
the multiline format: one argument a line), marked supports-workers. The
param file names each source as a nested @flag file, so an output's content
comes from its sources' content: a source line "--content=x" appends x.
(No argument may hold a newline: the multiline format would split it.)
"""

def _worker_compile_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".out")
    args = ctx.actions.args()
    args.add("--out=" + out.path)
    args.add("--content=%s from %s: " % (ctx.attr.greeting, ctx.label.name))
    for src in ctx.files.srcs:
        args.add("@" + src.path)

        # Read it once more directly, as a compiler reads its sources: an
        # input that is not staged fails the action.
        args.add("--cat=" + src.path)
    args.use_param_file("@%s", use_always = True)
    args.set_param_file_format("multiline")
    ctx.actions.run(
        executable = ctx.executable._tool,
        arguments = [args],
        inputs = ctx.files.srcs,
        outputs = [out],
        mnemonic = "WorkerCompile",
        progress_message = "Compiling %s" % ctx.label,
        execution_requirements = {"supports-workers": "1"},
    )
    return [DefaultInfo(files = depset([out]))]

worker_compile = rule(
    implementation = _worker_compile_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = True, mandatory = True),
        "greeting": attr.string(default = "hello"),
        "_tool": attr.label(
            default = "//tools:testworker",
            executable = True,
            cfg = "exec",
            allow_single_file = True,
        ),
    },
)
