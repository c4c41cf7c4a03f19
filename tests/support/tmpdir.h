/* tmpdir.h: a scratch directory for a cmocka test, made before it and removed after it:
 * cmocka_unit_test_setup_teardown(test, tmpdir_setup, tmpdir_teardown); the test reads
 * ((TmpDir *)*state)->dir. */
#ifndef EFFDET_TEST_TMPDIR_H
#define EFFDET_TEST_TMPDIR_H

typedef struct TmpDir {
    char dir[64];
} TmpDir;

int tmpdir_setup(void **state);
int tmpdir_teardown(void **state);

#endif
