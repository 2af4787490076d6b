#include <errno.h>
#include <sys/time.h>
#include <time.h>
#include "dust_internal.h"

static uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
}

/* Nanoseconds since _start. Without a known TSC rate time stands still,
 * which is better than running at a made-up speed. */
static uint64_t elapsed_ns(void)
{
	uint64_t hz = __dust_boot ? __dust_boot->tsc_hz : 0;
	if (hz == 0)
		return 0;
	uint64_t d = rdtsc() - __dust_tsc_start;
	/* Split so the product cannot overflow for any realistic hz. */
	return d / hz * 1000000000u + d % hz * 1000000000u / hz;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
	uint64_t ns = elapsed_ns();
	switch (id) {
	case CLOCK_REALTIME:
		ns += __dust_boot ? __dust_boot->realtime_ns : 0;
		break;
	case CLOCK_MONOTONIC:
	case CLOCK_PROCESS_CPUTIME_ID:
	case CLOCK_THREAD_CPUTIME_ID:
		break;
	default:
		errno = EINVAL;
		return -1;
	}
	ts->tv_sec = (time_t)(ns / 1000000000u);
	ts->tv_nsec = (long)(ns % 1000000000u);
	return 0;
}

time_t time(time_t *t)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (t)
		*t = ts.tv_sec;
	return ts.tv_sec;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	(void)tz;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}

clock_t clock(void)
{
	/* The VM exists for this request only: its CPU time is its age. */
	return (clock_t)(elapsed_ns() / 1000u);
}

struct tm *gmtime_r(const time_t *t, struct tm *out)
{
	long long s = *t, days = s / 86400, rem = s % 86400;
	if (rem < 0) {
		rem += 86400;
		days--;
	}
	out->tm_hour = (int)(rem / 3600);
	out->tm_min = (int)(rem / 60 % 60);
	out->tm_sec = (int)(rem % 60);
	out->tm_wday = (int)(((days + 4) % 7 + 7) % 7); /* 1970-01-01 was a Thursday */

	/* Civil-from-days over 400-year eras, with years starting in March so
	 * the leap day falls at the end. */
	long long z = days + 719468;
	long long era = (z >= 0 ? z : z - 146096) / 146097;
	long long doe = z - era * 146097;
	long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	long long mp = (5 * doy + 2) / 153;
	int mday = (int)(doy - (153 * mp + 2) / 5 + 1);
	int mon = (int)(mp < 10 ? mp + 3 : mp - 9);
	long long year = yoe + era * 400 + (mon <= 2);

	int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
	static const short cum[12] = { 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334 };
	out->tm_year = (int)(year - 1900);
	out->tm_mon = mon - 1;
	out->tm_mday = mday;
	out->tm_yday = cum[mon - 1] + mday - 1 + (leap && mon > 2);
	out->tm_isdst = 0;
	return out;
}

struct tm *gmtime(const time_t *t)
{
	static struct tm tm;
	return gmtime_r(t, &tm);
}
