/* test_coco_json.c: shared/coco.c, the COCO ground truth and results readers: the fields they
 * keep, Python json's reading rules (NaN literals, last repeated key wins, case-sensitive keys,
 * exact number rounding), and every kind of bad input giving one line that names file, line,
 * column and record. Test JSON is written with ' for " (see J()). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/coco.h"

/* The text with every ' turned into ", so that test JSON reads without escapes. */
static char *J(const char *text)
{
    char *s = strdup(text);
    assert_non_null(s);
    for (char *p = s; *p; p++)
        if (*p == '\'') *p = '"';
    return s;
}

static int parse_gt(CocoDataset *ds, const char *text, Err *err)
{
    char *s = J(text);
    int rc = coco_dataset_parse(ds, s, strlen(s), "gt.json", err);
    free(s);
    return rc;
}

static int parse_dets(CocoDetections *d, const char *text, Err *err)
{
    char *s = J(text);
    int rc = coco_detections_parse(d, s, strlen(s), "dets.json", err);
    free(s);
    return rc;
}

/* err holds one line containing want. */
static void assert_err(const Err *err, const char *want)
{
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" does not contain \"%s\"", err->msg, want);
    if (strchr(err->msg, '\n')) fail_msg("error \"%s\" is more than one line", err->msg);
}

static void expect_gt_error(const char *text, const char *want)
{
    CocoDataset ds;
    Err err = {{0}};
    if (parse_gt(&ds, text, &err) == 0) fail_msg("accepted %s (wanted error \"%s\")", text, want);
    assert_err(&err, want);
    assert_null(ds.images); /* left empty */
    coco_dataset_free(&ds);
}

static void expect_dets_error(const char *text, const char *want)
{
    CocoDetections d;
    Err err = {{0}};
    if (parse_dets(&d, text, &err) == 0) fail_msg("accepted %s (wanted error \"%s\")", text, want);
    assert_err(&err, want);
    assert_null(d.dets);
    coco_detections_free(&d);
}

static const char *GT_OK =
    "{'info': {'year': 2017, 'list': [1, 2, {'a': null}]}, 'licenses': [],"
    " 'images': [{'id': 42, 'width': 640, 'height': 480, 'file_name': 'a\\/b\\u00e9\\ud83d\\ude00.jpg',"
    "             'coco_url': 'x'}, {'id': 7}],"
    " 'annotations': [{'segmentation': [[1.5, 2, 3, 4, 5, 6]], 'area': 702.5, 'iscrowd': 0,"
    "                  'image_id': 42, 'bbox': [1.25, 2.5, 30, 40.75], 'category_id': 18, 'id': 900100259690},"
    "                 {'segmentation': {'counts': [1, 2, 3], 'size': [480, 640]}, 'area': 5,"
    "                  'iscrowd': 1, 'image_id': 7, 'bbox': [0, 0, 0, 0], 'category_id': 1, 'id': 3}],"
    " 'categories': [{'supercategory': 'animal', 'id': 18, 'name': 'dog'}, {'id': 1}]}";

static void test_gt_fields(void **state)
{
    CocoDataset ds;
    Err err = {{0}};
    if (parse_gt(&ds, GT_OK, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ds.n_images, 2);
    assert_int_equal(ds.images[0].id, 42);
    assert_int_equal(ds.images[0].width, 640);
    assert_int_equal(ds.images[0].height, 480);
    assert_string_equal(ds.images[0].file_name, "a/b\xc3\xa9\xf0\x9f\x98\x80.jpg");
    assert_int_equal(ds.images[1].width, 0); /* absent: defaults */
    assert_string_equal(ds.images[1].file_name, "");
    assert_int_equal(ds.n_annotations, 2);
    const CocoAnnotation *a = &ds.annotations[0];
    assert_int_equal(a->id, 900100259690); /* COCO's crowd ids exceed 32 bits */
    assert_int_equal(a->image_id, 42);
    assert_int_equal(a->category_id, 18);
    assert_true(a->bbox[0] == 1.25 && a->bbox[1] == 2.5 && a->bbox[2] == 30 && a->bbox[3] == 40.75);
    assert_true(a->area == 702.5);
    assert_int_equal(a->iscrowd, 0);
    assert_int_equal(ds.annotations[1].iscrowd, 1);
    assert_int_equal(ds.n_categories, 2);
    assert_string_equal(ds.categories[0].name, "dog");
    assert_string_equal(ds.categories[0].supercategory, "animal");
    assert_string_equal(ds.categories[1].name, "");
    assert_int_equal(coco_dataset_image_index(&ds, 7), 1);
    assert_int_equal(coco_dataset_image_index(&ds, 42), 0);
    assert_int_equal(coco_dataset_image_index(&ds, 8), -1);
    assert_int_equal(coco_dataset_category_index(&ds, 18), 0);
    assert_int_equal(coco_dataset_category_index(&ds, 2), -1);
    coco_dataset_free(&ds);
    coco_dataset_free(&ds); /* idempotent */
}

static void test_gt_structure(void **state)
{
    CocoDataset ds;
    Err err = {{0}};
    /* an image info file (test-dev) has no annotations */
    if (parse_gt(&ds, "{'images': [{'id': 1}], 'categories': []}", &err)) fail_msg("%s", err.msg);
    assert_int_equal(ds.n_annotations, 0);
    coco_dataset_free(&ds);
    /* a repeated key keeps its last value, as Python's json does */
    if (parse_gt(&ds, "{'images': [{'id': 1}], 'images': [{'id': 2, 'id': 3}], 'categories': []}",
                 &err))
        fail_msg("%s", err.msg);
    assert_int_equal(ds.n_images, 1);
    assert_int_equal(ds.images[0].id, 3);
    coco_dataset_free(&ds);
    expect_gt_error("{'categories': []}", "gt.json: the top-level object has no \"images\" list");
    expect_gt_error("{'images': []}", "no \"categories\" list");
    expect_gt_error("[]", "gt.json:1:1: expected a JSON object with \"images\" and \"categories\", "
                          "found a list");
    expect_gt_error("{'images': {}, 'categories': []}", "\"images\" must be a list, found an object");
    expect_gt_error("{'images': [1], 'categories': []}", "image 0: must be an object, found a number");
}

static void test_gt_bad_records(void **state)
{
    expect_gt_error("{'images': [{'id': 1}, {'id': 1}], 'categories': []}",
                    "gt.json: images 0 and 1 have the same id 1");
    expect_gt_error("{'images': [], 'categories': [{'id': 5}, {'id': 5}]}",
                    "categories 0 and 1 have the same id 5");
    const char *two_anns =
        "{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': ["
        "{'id': 4, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1},"
        "{'id': 4, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1}]}";
    expect_gt_error(two_anns, "annotations 0 and 1 have the same id 4");
    expect_gt_error("{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': ["
                    "{'id': 4, 'image_id': 2, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1}]}",
                    "annotation 0 (id 4): image_id 2 is not in \"images\"");
    expect_gt_error("{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': ["
                    "{'id': 4, 'image_id': 1, 'category_id': 3, 'bbox': [0, 0, 1, 1], 'area': 1}]}",
                    "annotation 0 (id 4): category_id 3 is not in \"categories\"");
    static const char *fields[] = {"'id': 4", "'image_id': 1", "'category_id': 1",
                                   "'bbox': [0, 0, 1, 1]", "'area': 1"};
    static const char *names[] = {"id", "image_id", "category_id", "bbox", "area"};
    for (int drop = 0; drop < 5; drop++) {
        char text[512], want[64];
        int n = snprintf(text, sizeof text, "{'images': [{'id': 1}], 'categories': [{'id': 1}], "
                                            "'annotations': [\n  {");
        for (int f = 0, first = 1; f < 5; f++)
            if (f != drop) n += snprintf(text + n, sizeof text - n, "%s%s", first ? "" : ", ",
                                         fields[f]), first = 0;
        snprintf(text + n, sizeof text - n, "}]}");
        snprintf(want, sizeof want, "gt.json:2:3: annotation 0: missing \"%s\"", names[drop]);
        expect_gt_error(text, want);
    }
    expect_gt_error("{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': [{'id': 4,"
                    "'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1, 'iscrowd': 2}]}",
                    "annotation 0: \"iscrowd\" must be 0 or 1, found 2");
    expect_gt_error("{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': [{'id': 4,"
                    "'image_id': 1, 'category_id': 1, 'bbox': [0, 0, -1, 1], 'area': 1}]}",
                    "annotation 0: \"bbox\" has a negative width (-1)");
    expect_gt_error("{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': [{'id': 4,"
                    "'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': NaN}]}",
                    "annotation 0: \"area\" is not finite (nan)");
    expect_gt_error("{'images': [{'id': 1, 'width': -3}], 'categories': []}",
                    "image 0: \"width\" must be between 0 and 2147483647, found -3");
    expect_gt_error("{'images': [{'id': 1, 'file_name': 5}], 'categories': []}",
                    "image 0: \"file_name\" must be a string, found a number");
    expect_gt_error("{'images': [{'id': '1'}], 'categories': []}",
                    "image 0: \"id\" must be an integer, found a string");
}

static void test_gt_crowd_forms(void **state)
{
    CocoDataset ds;
    Err err = {{0}};
    const char *text =
        "{'images': [{'id': 1}], 'categories': [{'id': 1}], 'annotations': ["
        "{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1, 'iscrowd': true},"
        "{'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1, 'iscrowd': false},"
        "{'id': 3, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'area': 1, 'iscrowd': 1.0}]}";
    if (parse_gt(&ds, text, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ds.annotations[0].iscrowd, 1);
    assert_int_equal(ds.annotations[1].iscrowd, 0);
    assert_int_equal(ds.annotations[2].iscrowd, 1);
    coco_dataset_free(&ds);
}

static void test_dets_fields(void **state)
{
    CocoDetections d;
    Err err = {{0}};
    const char *text =
        "[{'image_id': 3.0, 'category_id': 1, 'bbox': [1, 2, 3, 4], 'score': 0.5, 'id': 9,"
        "  'segmentation': [[1, 2]], 'extra': {'deep': [[[{}]]]}},"
        " {'image_id': -9007199254740993, 'category_id': 2, 'bbox': [0, 0, 0, 0], 'score': -Infinity},"
        " {'score': 0.1, 'Score': 'x', 'score': 0.9, 'image_id': 1, 'category_id': 1, 'bbox': [0,0,1,1],"
        "  'a_key_much_longer_than_any_key_we_look_for': 1, 'sc\\u006fre': 0.25}]";
    if (parse_dets(&d, text, &err)) fail_msg("%s", err.msg);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.dets[0].image_id, 3);
    assert_true(d.dets[0].bbox[3] == 4 && d.dets[0].score == 0.5);
    assert_int_equal(d.dets[1].image_id, -9007199254740993); /* exact beyond 2^53 */
    assert_true(isinf(d.dets[1].score) && d.dets[1].score < 0);
    assert_true(d.dets[2].score == 0.25); /* escaped key decoded; the last one wins */
    coco_detections_free(&d);
    coco_detections_free(&d);
    if (parse_dets(&d, " [ ] ", &err)) fail_msg("%s", err.msg);
    assert_int_equal(d.n, 0);
    coco_detections_free(&d);
}

static void test_dets_bad_records(void **state)
{
    static const char *fields[] = {"'image_id': 1", "'category_id': 1", "'bbox': [0, 0, 1, 1]",
                                   "'score': 0.5"};
    static const char *names[] = {"image_id", "category_id", "bbox", "score"};
    for (int drop = 0; drop < 4; drop++) {
        char text[256], want[64];
        int n = snprintf(text, sizeof text, "[{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, "
                                            "1], 'score': 0.5},\n {");
        for (int f = 0, first = 1; f < 4; f++)
            if (f != drop) n += snprintf(text + n, sizeof text - n, "%s%s", first ? "" : ", ",
                                         fields[f]), first = 0;
        snprintf(text + n, sizeof text - n, "}]");
        snprintf(want, sizeof want, "dets.json:2:2: detection 1: missing \"%s\"", names[drop]);
        expect_dets_error(text, want);
    }
#define DET(bbox, score) "[{'image_id': 1, 'category_id': 1, 'bbox': " bbox ", 'score': " score "}]"
    expect_dets_error(DET("[0, 0, -2.5, 1]", "0.5"),
                      "dets.json:1:44: detection 0: \"bbox\" has a negative width (-2.5)");
    expect_dets_error(DET("[0, 0, 1, -1e-9]", "0.5"), "\"bbox\" has a negative height (-1e-09)");
    expect_dets_error(DET("[0, 0, 1]", "0.5"), "detection 0: \"bbox\" must hold 4 numbers, found 3");
    expect_dets_error(DET("[0, 0, 1, 1, 1]", "0.5"), "\"bbox\" must hold 4 numbers, found 5");
    expect_dets_error(DET("[0, 0, Infinity, 1]", "0.5"), "\"bbox\" holds a non-finite number (inf)");
    expect_dets_error(DET("[0, 0, 1e999, 1]", "0.5"), "\"bbox\" holds a non-finite number (inf)");
    expect_dets_error(DET("'0 0 1 1'", "0.5"), "\"bbox\" must be a list of 4 numbers, found a string");
    expect_dets_error(DET("[0, 0, '1', 1]", "0.5"), "\"bbox\" must be a number, found a string");
    expect_dets_error(DET("[0, 0, 1, 1]", "NaN"), "dets.json:1:67: detection 0: \"score\" is NaN");
    expect_dets_error(DET("[0, 0, 1, 1]", "'0.5'"), "\"score\" must be a number, found a string");
    expect_dets_error(DET("[0, 0, 1, 1]", "null"), "\"score\" must be a number, found null");
#undef DET
    expect_dets_error("[{'image_id': 1.5, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1}]",
                      "\"image_id\" must be an integer that fits in 64 bits, found 1.5");
    expect_dets_error("[{'image_id': 1e19, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1}]",
                      "found 1e19");
    expect_dets_error("[{'image_id': 9223372036854775808, 'category_id': 1}]",
                      "found 9223372036854775808");
    expect_dets_error("[{'image_id': true}]", "\"image_id\" must be an integer, found a boolean");
    expect_dets_error("{'image_id': 1}", "dets.json:1:1: expected a list of detections, found an object");
    expect_dets_error("[[1]]", "detection 0: must be an object, found a list");
    expect_dets_error("[{'Image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1}]",
                      "missing \"image_id\""); /* keys are case-sensitive */
    expect_dets_error("[{'image_id\\u0000': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1}]",
                      "missing \"image_id\"");
}

/* Malformed JSON: one line with the position; never a crash, however deep or cut short. */
static void test_malformed(void **state)
{
    static const struct { const char *text, *want; } cases[] = {
        {"", "dets.json:1:1: expected a list of detections, found the end of the file"},
        {"[", "dets.json:1:2: detection 0: malformed JSON: expected a value, found the end of the file"},
        {"[{", "1:3: detection 0: malformed JSON: expected a string key, found the end of the file"},
        {"[{'image_id'", "expected ':' after a key, found the end of the file"},
        {"[{'image_id': 1,}]", "1:17: detection 0: malformed JSON: expected a string key, found '}'"},
        {"[{'image_id': 1 'score': 1}]", "expected ',' or '}' after an object member, found '\"'"},
        {"[{'bbox': [1 2]}]", "1:14: detection 0: malformed JSON: expected ',' or ']' after a list"},
        {"[{'x': [1,]}]", "malformed JSON: expected a value, found ']'"},
        {"[{'x': 'abc}]", "1:8: detection 0: malformed JSON: unterminated string"},
        {"[{'x': 'a\\xb'}]", "malformed JSON: invalid escape in a string"},
        {"[{'x': 'a\\u12'}]", "malformed JSON: \\u needs 4 hex digits"},
        {"[{'x': 'a\tb'}]", "malformed JSON: control character 0x09 in a string"},
        {"[{'x': 01}]", "expected ',' or '}' after an object member, found '1'"},
        {"[{'x': 1.}]", "malformed JSON: expected a digit after '.'"},
        {"[{'x': .5}]", "malformed JSON: expected a value, found '.'"},
        {"[{'x': -}]", "malformed JSON: expected a value, found '-'"},
        {"[{'x': +1}]", "malformed JSON: expected a value, found '+'"},
        {"[{'x': 1e}]", "malformed JSON: expected a digit in the exponent"},
        {"[{'x': tru}]", "malformed JSON: expected a value, found 't'"},
        {"[{'x': nan}]", "malformed JSON: expected a value, found 'n'"},
        {"[{'x': \x01}]", "found byte 0x01"},
        {"[] []", "1:4: malformed JSON: expected the end of the file after the top-level value"},
        {"[\n{'image_id': 1,\n 'bbox': [1, 2, 3]}\n]",
         "dets.json:3:10: detection 0: \"bbox\" must hold 4 numbers, found 3"},
        {"[\r\n {'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 1}\r\n ,{'x': ]}",
         "dets.json:3:9: detection 1: malformed JSON: expected a value, found ']'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_dets_error(cases[i].text, cases[i].want);
    expect_gt_error("{'images': [{'id': 1}], 'categories': []", "1:41: malformed JSON: expected "
                                                                "',' or '}' after an object member");
    /* nesting deep enough to overflow a naive recursive parser's stack */
    size_t depth = 200000;
    char *deep = malloc(depth + 16);
    assert_non_null(deep);
    strcpy(deep, "[{'x': ");
    memset(deep + 7, '[', depth);
    deep[7 + depth] = '\0';
    expect_dets_error(deep, "malformed JSON: nested deeper than 512");
    free(deep);
}

/* Numbers round as Python's float() (correctly rounded) through the fast path and strtod. */
static void test_number_rounding(void **state)
{
    static const char *tricky[] = {
        "0", "-0", "-0.0", "0.1", "0.3", "123.456", "1e-7", "1E+2", "2.5e-3", "9007199254740993",
        "9007199254740992.0", "0.30000000000000004", "1.7976931348623157e308", "5e-324",
        "2.2250738585072014e-308", "123456789012345678901234567890", "1.00000000000000011102230246251565",
        "4.35", "0.000000000000000000000000000001234", "640.00", "427.0000000001", "1e22", "1e23",
        "3.0e-22", "999999999999999.9", "89255.0e-22", "8.98846567431158e307"};
    char text[256], buf[64];
    Err err = {{0}};
    for (size_t i = 0; i < sizeof tricky / sizeof tricky[0] + 20000; i++) {
        const char *num = tricky[i % (sizeof tricky / sizeof tricky[0])];
        if (i >= sizeof tricky / sizeof tricky[0]) { /* random doubles at every printed precision */
            uint64_t bits = (uint64_t)rand() << 42 ^ (uint64_t)rand() << 21 ^ (uint64_t)rand();
            double v = ldexp((double)(bits & ((1ull << 53) - 1)), (int)(rand() % 80) - 60);
            snprintf(buf, sizeof buf, i % 2 ? "%.*g" : "%.*f", 1 + (int)(i % 17), v);
            num = buf;
        }
        snprintf(text, sizeof text, "[{'image_id': 1, 'category_id': 1, 'bbox': [%s, 0, 1, 1], "
                                    "'score': %s}]", num, num);
        CocoDetections d;
        if (parse_dets(&d, text, &err)) fail_msg("%s: %s", num, err.msg);
        double want = strtod(num, NULL);
        if (num[0] == '-' && strspn(num + 1, "0") == strlen(num + 1)) want = 0; /* Python's int -0 */
        if (memcmp(&d.dets[0].score, &want, sizeof want))
            fail_msg("%s read as %.17g, strtod gives %.17g", num, d.dets[0].score, want);
        coco_detections_free(&d);
    }
}

static void test_files(void **state)
{
    CocoDataset ds;
    CocoDetections d;
    Err err = {{0}};
    assert_int_equal(coco_dataset_load(&ds, "/nonexistent/gt.json", &err), -1);
    assert_err(&err, "/nonexistent/gt.json: No such file or directory");
    assert_int_equal(coco_detections_load(&d, "/", &err), -1);
    assert_err(&err, "/: Is a directory");
    char path[] = "/tmp/test_coco_json_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    char *text = J("[{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 0.5}]");
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    free(text);
    if (coco_detections_load(&d, path, &err)) fail_msg("%s", err.msg);
    assert_int_equal(d.n, 1);
    coco_detections_free(&d);
    assert_int_equal(coco_dataset_load(&ds, path, &err), -1);
    if (!strstr(err.msg, path)) fail_msg("error \"%s\" does not name %s", err.msg, path);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gt_fields),       cmocka_unit_test(test_gt_structure),
        cmocka_unit_test(test_gt_bad_records),  cmocka_unit_test(test_gt_crowd_forms),
        cmocka_unit_test(test_dets_fields),     cmocka_unit_test(test_dets_bad_records),
        cmocka_unit_test(test_malformed),       cmocka_unit_test(test_number_rounding),
        cmocka_unit_test(test_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
