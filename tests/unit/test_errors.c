/*
 * test_errors.c - libcb's error codes: one table (CB_ERRORS in cb.h plus the
 * errno values libcb returns) gives every code a stable name and a text.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "cb.h"

Test(errors, every_libcb_code_has_its_own_value_name_and_text)
{
    static const struct {
        int value;
        const char *name;
    } codes[] = {
#define ROW(name, value, text) {value, #name},
        CB_ERRORS(ROW)
#undef ROW
    };
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(codes[i].value, -4095, "%s collides with an errno", codes[i].name);
        cr_assert_str_eq(cb_err_name(codes[i].value), codes[i].name);
        cr_assert_str_neq(cb_strerror(codes[i].value), "unknown error", "%s has no text", codes[i].name);
        for (size_t k = 0; k < i; k++)
            cr_assert_neq(codes[i].value, codes[k].value, "%s and %s share a value", codes[i].name, codes[k].name);
    }
}

Test(errors, errno_codes_libcb_returns_are_named_like_errno)
{
    cr_assert_str_eq(cb_err_name(-ENOENT), "ENOENT");
    cr_assert_str_eq(cb_err_name(-EDQUOT), "EDQUOT");
    cr_assert_str_eq(cb_err_name(0), "OK");
    cr_assert_str_eq(cb_err_name(-12345678), "unknown");
    cr_assert_str_eq(cb_strerror(-12345678), "unknown error");
    cr_assert_not_null(strstr(cb_strerror(-EDQUOT), "max_circuits_per_uid"), "the text names the option");
}
