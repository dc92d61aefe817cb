/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  Spend key generation: `lava_sk_` followed by 43 base62 characters drawn
 *	  uniformly from pg_strong_random (43 * log2(62) > 256 bits).  Only the
 *	  SQL layer's SHA-256 digest of a key is ever stored.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

#define LAVA_KEY_PREFIX "lava_sk_"
#define LAVA_KEY_RANDOM_CHARS 43

static const char Base62[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

PG_FUNCTION_INFO_V1(lava_generate_key);

/* lava._generate_key() returns text: a new random spend key. */
Datum
lava_generate_key(PG_FUNCTION_ARGS)
{
	char		key[sizeof(LAVA_KEY_PREFIX) + LAVA_KEY_RANDOM_CHARS];
	int			n = 0;

	memcpy(key, LAVA_KEY_PREFIX, strlen(LAVA_KEY_PREFIX));
	while (n < LAVA_KEY_RANDOM_CHARS)
	{
		unsigned char buf[64];
		int			i;

		if (!pg_strong_random(buf, sizeof(buf)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random bytes for a spend key")));
		/* rejection sampling: 248 = 4 * 62 keeps every character equally likely */
		for (i = 0; i < (int) sizeof(buf) && n < LAVA_KEY_RANDOM_CHARS; i++)
			if (buf[i] < 248)
				key[strlen(LAVA_KEY_PREFIX) + n++] = Base62[buf[i] % 62];
		explicit_bzero(buf, sizeof(buf));
	}
	key[strlen(LAVA_KEY_PREFIX) + LAVA_KEY_RANDOM_CHARS] = '\0';
	PG_RETURN_TEXT_P(cstring_to_text(key));
}
