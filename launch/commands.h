/* commands.h: the subcommands of the `effdet` front command. Each takes the arguments after its
 * name (argv[0] is the subcommand name) and returns the process exit status. */
#ifndef EFFDET_COMMANDS_H
#define EFFDET_COMMANDS_H

int cmd_info(int argc, char **argv);
int cmd_parity(int argc, char **argv);
int cmd_infer(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_data(int argc, char **argv); /* --mode augment|handoff|data|pipeline */
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_batches(int argc, char **argv);
int cmd_worker(int argc, char **argv);      /* a training worker, started by the coordinator */
int cmd_eval_worker(int argc, char **argv); /* an epoch's evaluation, started by the coordinator */

#endif
