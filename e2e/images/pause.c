/* Sandbox ("pause") process for the e2e CRI pods: sleeps until SIGTERM/SIGINT.
 * Built with `cc -static -Os` into the `pause` test image. */
#include <signal.h>
#include <unistd.h>

static void done(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
