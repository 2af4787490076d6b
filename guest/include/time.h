#ifndef _TIME_H
#define _TIME_H
#include <stddef.h>
#include <sys/types.h>

#define CLOCKS_PER_SEC 1000000L
#define CLOCK_REALTIME           0
#define CLOCK_MONOTONIC          1
#define CLOCK_PROCESS_CPUTIME_ID 2
#define CLOCK_THREAD_CPUTIME_ID  3

struct timespec {
	time_t tv_sec;
	long tv_nsec;
};

struct tm {
	int tm_sec, tm_min, tm_hour, tm_mday, tm_mon, tm_year;
	int tm_wday, tm_yday, tm_isdst;
};

time_t time(time_t *t);
int clock_gettime(clockid_t id, struct timespec *ts);
clock_t clock(void);
/* UTC only: the guest has no time zones. */
struct tm *gmtime_r(const time_t *t, struct tm *out);
struct tm *gmtime(const time_t *t);

#endif
