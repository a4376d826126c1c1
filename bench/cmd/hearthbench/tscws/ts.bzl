"""ts_lib: one TypeScript library compiled by the real tsc_wrapped (npm
@bazel/concatjs, TypeScript 4.9.5) as a Bazel persistent worker, proto
protocol. Written for hearthbench's tsc scenario; no rules_nodejs (Bazel 4.2.3
here has no internet). The command line is rules_nodejs's ts_library's:

    node [flags] tsc_wrapped.js @@<tsconfig>

"@@" makes Bazel (and Hearth) treat the argument as a flag file, so the action
is worker-eligible, and pass it through unexpanded; tsc_wrapped strips the
at-signs, one-shot or as a worker, so the same command line is a correct
one-shot fallback.
"""

load(":mode.bzl", "EXEC_PROPERTIES")

TsInfo = provider(fields = ["declarations"])

def _ts_lib_impl(ctx):
    bin_dir = ctx.bin_dir.path
    outs = []
    for src in ctx.files.srcs:
        stem = src.basename[:-len(".ts")]
        outs.append(ctx.actions.declare_file(stem + ".js"))
        outs.append(ctx.actions.declare_file(stem + ".d.ts"))
    dep_decls = depset(transitive = [d[TsInfo].declarations for d in ctx.attr.deps])
    direct_packages = [d.label.package for d in ctx.attr.deps]
    tsconfig = ctx.actions.declare_file(ctx.label.name + "_tsconfig.json")

    # tsc_wrapped resolves the tsconfig's paths from the tsconfig's own
    # directory (rootDir-relative ones from rootDir): lead them back to the
    # execroot, where every path below starts.
    up = "/".join([".."] * len(tsconfig.dirname.split("/")))
    config = struct(
        compilerOptions = struct(
            target = "es2017",
            module = "commonjs",
            lib = ["es2017"],
            types = [],
            strict = True,
            declaration = True,
            noEmitOnError = True,
            skipLibCheck = True,
            rootDir = up,
            rootDirs = [up, up + "/" + bin_dir],
            outDir = up + "/" + bin_dir,
            baseUrl = up,
        ),
        bazelOptions = struct(
            workspaceName = ctx.workspace_name,
            target = str(ctx.label),
            package = ctx.label.package,
            tsickle = False,
            googmodule = False,
            es5Mode = True,
            devmode = True,
            untyped = False,
            typeCheck = True,
            typeCheckDependencies = False,
            disableStrictDeps = False,
            allowedStrictDeps = [f.path for f in ctx.files.srcs] + [f.path for f in dep_decls.to_list() if f.owner.package in direct_packages],
            compilationTargetSrc = [f.path for f in ctx.files.srcs],
            expectedDiagnostics = [],
            ignoreWarningPaths = [],
            typeBlackListPaths = [],
            suppressTsconfigOverrideWarnings = True,
        ),
        files = [up + "/" + f.path for f in ctx.files.srcs + dep_decls.to_list()],
    )
    ctx.actions.write(tsconfig, config.to_json())
    ctx.actions.run(
        executable = ctx.executable._node,
        arguments = [
            # Module paths stay inside the execroot (Bazel's local workers
            # see symlinks into the external repository), so that TypeScript
            # finds its lib.*.d.ts among the declared inputs.
            "--preserve-symlinks",
            "--preserve-symlinks-main",
            ctx.file._tsc_wrapped.path,
            "@@" + tsconfig.path,
        ],
        inputs = depset(ctx.files.srcs + [tsconfig], transitive = [dep_decls]),
        # Bazel's worker strategy needs tool files, and they are what a
        # worker key covers: node, tsc_wrapped and its node_modules.
        tools = depset([ctx.file._tsc_wrapped], transitive = [depset(ctx.files._runtime)]),
        outputs = outs,
        mnemonic = "TsCompile",
        progress_message = "Compiling TypeScript %s" % ctx.label,
        execution_requirements = {"supports-workers": "1"},
    )
    decls = depset([f for f in outs if f.path.endswith(".d.ts")], transitive = [dep_decls])
    return [DefaultInfo(files = depset(outs)), TsInfo(declarations = decls)]

_ts_lib = rule(
    implementation = _ts_lib_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".ts"]),
        "deps": attr.label_list(providers = [TsInfo]),
        "_node": attr.label(default = "//tools:node", executable = True, cfg = "exec", allow_single_file = True),
        "_tsc_wrapped": attr.label(
            default = "@tsc_worker//:node_modules/@bazel/concatjs/internal/tsc_wrapped/tsc_wrapped.js",
            allow_single_file = True,
        ),
        "_runtime": attr.label(default = "@tsc_worker//:runtime"),
    },
)

def ts_lib(name, **kwargs):
    # EXEC_PROPERTIES (tools/mode.bzl, written per mode by hearthbench) is
    # {"persistentWorkerKey": ...} for Hearth's persistent mode: Bazel 4.2.3
    # sends no key of its own. Local builds ignore it.
    _ts_lib(name = name, exec_properties = EXEC_PROPERTIES, **kwargs)
