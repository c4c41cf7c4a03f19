/* cmd_batches.c: `effdet batches`: the batch stream a worker would train on, one line per batch,
 * for checking the data pipeline (determinism, exactly-once delivery, restarts) and for debugging
 * a dataset. Either starts its own data stages or connects to running augmenters:
 *
 *   effdet batches (--data DIR | --ann FILE --images DIR) [--loaders N] [--augmenters M] | --connect EP[,EP...]
 *                  --batch-size B --image-size HxW [--seed S] [--eval] [--epochs E]
 *                  [--rank R --world W] [--log FILE [--resume]] [--name NAME] [--delay-ms MS]
 *                  [--skip-bad-images] [--dead-ms MS]
 *
 * A line is "EPOCH BATCH HASH N_VALID INDEX:VALID ..." with HASH the FNV-1a 64 of every tensor of the
 * batch. With --log each line is appended and fsynced as its batch is consumed, and --resume
 * starts after the log's last line: a consumer killed at any point and restarted this way has
 * consumed every batch exactly once. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/data_pipeline.h"
#include "shared/log.h"
#include "shared/stop_signal.h"
#include "worker/batch_stream.h"

static const char *USAGE =
    "effdet batches (--data DIR | --ann FILE --images DIR) [--loaders N] [--augmenters M] | "
    "--connect EP[,EP...]  --batch-size B --image-size HxW [--seed S] [--eval] [--epochs E] "
    "[--rank R --world W] [--log FILE [--resume]] [--name NAME] [--delay-ms MS] "
    "[--skip-bad-images] [--dead-ms MS]";

typedef struct BatchesArgs {
    DataPipelineConfig pipe;
    char *connect;
    long epochs, rank, world, delay_ms, dead_ms;
    const char *log, *name;
    int resume, eval;
} BatchesArgs;

static int parse(int argc, char **argv, BatchesArgs *a, Err *err)
{
    static const struct option opts[] = {
        {"data", required_argument, 0, 'D'},      {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'},    {"loaders", required_argument, 0, 'l'},
        {"augmenters", required_argument, 0, 'a'}, {"connect", required_argument, 0, 'c'},
        {"batch-size", required_argument, 0, 'b'}, {"image-size", required_argument, 0, 's'},
        {"seed", required_argument, 0, 'S'},      {"eval", no_argument, 0, 'e'},
        {"epochs", required_argument, 0, 'E'},    {"rank", required_argument, 0, 'r'},
        {"world", required_argument, 0, 'w'},     {"log", required_argument, 0, 'L'},
        {"resume", no_argument, 0, 'R'},          {"name", required_argument, 0, 'n'},
        {"delay-ms", required_argument, 0, 'd'},  {"skip-bad-images", no_argument, 0, 'k'},
        {"dead-ms", required_argument, 0, 'x'},   {0, 0, 0, 0}};
    *a = (BatchesArgs){.epochs = 1, .world = 1, .name = "worker0", .dead_ms = 3000,
                       .pipe = {.loaders = 1, .augmenters = 1, .batch = 0}};
    long v;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'D': a->pipe.data = optarg; break;
        case 'A': a->pipe.ann = optarg; break;
        case 'I': a->pipe.images = optarg; break;
        case 'c': a->connect = optarg; break;
        case 'e': a->eval = 1; break;
        case 'L': a->log = optarg; break;
        case 'R': a->resume = 1; break;
        case 'n': a->name = optarg; break;
        case 'k': a->pipe.skip_bad_images = 1; break;
        case 'l': if (cli_parse_int("--loaders", optarg, 1, DATA_PIPELINE_MAX, &v, err)) return -1; a->pipe.loaders = (int)v; break;
        case 'a': if (cli_parse_int("--augmenters", optarg, 1, DATA_PIPELINE_MAX, &v, err)) return -1; a->pipe.augmenters = (int)v; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, BATCH_STREAM_MAX, &v, err)) return -1; a->pipe.batch = (int)v; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &a->pipe.height, &a->pipe.width, err)) return -1; break;
        case 'S': if (cli_parse_int("--seed", optarg, 0, INT32_MAX, &v, err)) return -1; a->pipe.seed = (uint64_t)v; break;
        case 'E': if (cli_parse_int("--epochs", optarg, 1, 1 << 20, &a->epochs, err)) return -1; break;
        case 'r': if (cli_parse_int("--rank", optarg, 0, 4095, &a->rank, err)) return -1; break;
        case 'w': if (cli_parse_int("--world", optarg, 1, 4096, &a->world, err)) return -1; break;
        case 'd': if (cli_parse_int("--delay-ms", optarg, 0, 60000, &a->delay_ms, err)) return -1; break;
        case 'x': if (cli_parse_int("--dead-ms", optarg, 50, 600000, &a->dead_ms, err)) return -1; break;
        default: return cli_usage(USAGE) ? -2 : -2;
        }
    }
    if (optind < argc) return err_set(err, "unexpected argument '%s'", argv[optind]);
    if (!a->pipe.batch || !a->pipe.height) return err_set(err, "--batch-size and --image-size are required");
    if (!a->connect && !a->pipe.data && !(a->pipe.ann && a->pipe.images))
        return err_set(err, "a dataset is required: --data DIR or --ann FILE --images DIR (or --connect)");
    if (a->rank >= a->world) return err_set(err, "--rank %ld of --world %ld", a->rank, a->world);
    if (a->resume && !a->log) return err_set(err, "--resume needs --log");
    a->pipe.dead_ms = (int)a->dead_ms;
    return 0;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t batch_hash(const Batch *b, int bs)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, b->images, b->images_bytes);
    h = fnv(h, b->bbox, (size_t)bs * 400 * 4);
    h = fnv(h, b->cls, (size_t)bs * 100 * 4);
    h = fnv(h, b->crowd, (size_t)bs * 100);
    h = fnv(h, b->img_scale, (size_t)bs * 4);
    h = fnv(h, b->img_size, (size_t)bs * 8);
    h = fnv(h, b->image_id, (size_t)bs * 8);
    h = fnv(h, b->index, (size_t)bs * 8);
    return fnv(h, b->replaced, (size_t)bs);
}

/* The batch after the log's last line (epoch 0, batch 0 for an empty or missing log). */
static int resume_point(const char *path, long *epoch, long *b, Err *err)
{
    *epoch = 0, *b = -1;
    FILE *f = fopen(path, "r");
    if (!f) return errno == ENOENT ? 0 : err_set(err, "%s: %s", path, strerror(errno));
    char line[1 << 16];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%ld %ld", epoch, b) != 2) {
            fclose(f);
            return err_set(err, "%s: not a batches log", path);
        }
    fclose(f);
    return 0;
}

int cmd_batches(int argc, char **argv)
{
    BatchesArgs a;
    Err err;
    int rc = parse(argc, argv, &a, &err);
    if (rc == -2) return 2;
    if (rc < 0) return cli_fail("batches", &err);
    long start_epoch = 0, last_b = -1;
    if (a.resume && resume_point(a.log, &start_epoch, &last_b, &err) < 0)
        return cli_fail("batches", &err);
    int stop_fd = stop_signal_install();
    DataPipeline pipe = {0};
    const char *eps[DATA_PIPELINE_MAX];
    int n_eps = 0;
    if (a.connect) {
        for (char *t = strtok(a.connect, ","); t && n_eps < DATA_PIPELINE_MAX; t = strtok(NULL, ","))
            eps[n_eps++] = t;
    } else {
        if (data_pipeline_start(&pipe, &a.pipe, &err) < 0) return cli_fail("batches", &err);
        for (int i = 0; i < pipe.n_aug; i++) eps[n_eps++] = pipe.aug_ptrs[i];
    }
    void *zctx = zmq_util_ctx_new(&err);
    BatchStream s = {0};
    BatchStreamConfig bc = {.name = a.name, .augmenters = eps, .n_augmenters = n_eps, .window = 2,
                            .batch = a.pipe.batch, .height = a.pipe.height, .width = a.pipe.width,
                            .seed = a.pipe.seed, .train = !a.eval, .rank = (int)a.rank,
                            .world = (int)a.world, .epoch = (uint32_t)start_epoch,
                            .first_batch = (uint64_t)(last_b + 1), /* after the logged batch */
                            .dead_ms = (int)a.dead_ms,
                            .limits = wire_limits_default()};
    if (!a.connect) bc.alive = data_pipeline_alive, bc.alive_arg = &pipe;
    int fd = -1;
    rc = zctx ? 0 : -1;
    if (rc == 0) rc = batch_stream_init(&s, zctx, &bc, &err);
    if (rc == 0) rc = batch_stream_start(&s, stop_fd, &err);
    if (rc == 0 && a.log && (fd = open(a.log, O_WRONLY | O_CREAT | O_APPEND, 0644)) < 0)
        rc = err_set(&err, "%s: %s", a.log, strerror(errno));
    char *line = malloc(64 + (size_t)a.pipe.batch * 32);
    uint64_t n_batches = 0, n_samples = 0, n_replaced = 0, n_dropped = 0;
    while (rc == 0 && line) {
        Batch b;
        if ((rc = batch_stream_next(&s, &b, stop_fd, &err)) != 0) break;
        if (b.epoch >= (uint64_t)a.epochs) {
            batch_stream_release(&s, &b);
            break;
        }
        int n = sprintf(line, "%u %" PRIu64 " %016" PRIx64 " %d", b.epoch, b.b,
                        batch_hash(&b, a.pipe.batch), b.n_valid);
        for (int j = 0; j < a.pipe.batch; j++)
            n += sprintf(line + n, " %" PRId64 ":%d", b.index[j], b.valid[j]);
        line[n++] = '\n';
        n_batches++, n_samples += (uint64_t)b.n_valid, n_dropped += b.boxes_dropped;
        for (int j = 0; j < a.pipe.batch; j++) n_replaced += b.valid[j] && b.replaced[j];
        batch_stream_release(&s, &b);
        if (fd >= 0 && (write(fd, line, (size_t)n) != n || fsync(fd) != 0))
            rc = err_set(&err, "%s: %s", a.log, strerror(errno));
        else if (fd < 0 && fwrite(line, 1, (size_t)n, stdout) != (size_t)n)
            rc = err_set(&err, "stdout: %s", strerror(errno));
        if (a.delay_ms) usleep((useconds_t)a.delay_ms * 1000);
    }
    free(line);
    if (fd >= 0) close(fd);
    batch_stream_free(&s);
    zmq_util_ctx_term(zctx);
    if (!a.connect) data_pipeline_stop(&pipe);
    if (rc < 0) return cli_fail("batches", &err);
    if (rc == 1 && stop_signal_raised(stop_fd)) return 130; /* interrupted: not a complete run */
    /* A warning when images were replaced: the run "worked", but on other data than asked. */
    log_msg(n_replaced ? LOG_WARN : LOG_INFO,
            "batches: %llu batches, %llu samples (%llu unreadable images replaced), %llu boxes "
            "dropped by the transform", (unsigned long long)n_batches,
            (unsigned long long)n_samples, (unsigned long long)n_replaced,
            (unsigned long long)n_dropped);
    return 0;
}
