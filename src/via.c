/* Via field values: the received-by of each entry (see via.h). */
#include "via.h"

static bool is_ws(char c)
{
	return c == ' ' || c == '\t';
}

/* A byte that can be part of received-protocol or received-by here. */
static bool is_word(char c)
{
	return !is_ws(c) && c != ',' && c != '(';
}

/* Skips a comment starting at value[i] == '('; returns the index after its
 * closing parenthesis, or len when it is not closed. */
static size_t skip_comment(const char *value, size_t len, size_t i)
{
	size_t depth = 0;

	for (; i < len; i++) {
		if (value[i] == '\\')
			i++;
		else if (value[i] == '(')
			depth++;
		else if (value[i] == ')' && --depth == 0)
			return i + 1;
	}
	return len;
}

bool via_names(const char *value, size_t len, via_name_fn fn, void *arg)
{
	size_t i = 0;

	while (i < len) {
		/* OWS and empty list elements */
		while (i < len && (is_ws(value[i]) || value[i] == ','))
			i++;
		/* received-protocol RWS received-by */
		size_t p = i;
		while (i < len && is_word(value[i]))
			i++;
		if (i > p && i < len && is_ws(value[i])) {
			while (i < len && is_ws(value[i]))
				i++;
			size_t b = i;
			while (i < len && is_word(value[i]))
				i++;
			if (i > b && fn(arg, value + b, i - b))
				return true;
		}
		/* the rest of the entry: comments and anything else up to a comma */
		while (i < len && value[i] != ',')
			i = value[i] == '(' ? skip_comment(value, len, i) : i + 1;
	}
	return false;
}
