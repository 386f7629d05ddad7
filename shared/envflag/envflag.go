// Package envflag lets every command-line flag fall back to an environment
// variable: flag "drain-timeout" of a program with prefix "ARBITER" reads
// ARBITER_DRAIN_TIMEOUT when the flag is not given.
package envflag

import (
	"flag"
	"fmt"
	"strings"
)

// Name returns the environment variable behind a flag.
func Name(prefix, flagName string) string {
	return strings.ToUpper(prefix + "_" + strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs, then sets every flag that args did not set from
// its environment variable, if that is set. lookup is os.LookupEnv in
// production. Errors are one line, naming the variable.
func Parse(fs *flag.FlagSet, prefix string, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return FromEnv(fs, prefix, lookup)
}

// FromEnv sets every flag of the parsed fs that the command line did not set
// from its environment variable, if that is set. It is the second half of
// Parse, for commands that take positional arguments too.
func FromEnv(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		env := Name(prefix, f.Name)
		if v, ok := lookup(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("invalid value %q for %s (flag -%s): %v", v, env, f.Name, e)
			}
		}
	})
	return err
}

// Usage returns a usage function that lists every flag with its variable.
func Usage(fs *flag.FlagSet, prefix, summary string) func() {
	return func() {
		w := fs.Output()
		fmt.Fprintf(w, "%s\n\nFlags (each also read from the environment variable shown):\n", summary)
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(w, "  -%s (%s)\n    \t%s", f.Name, Name(prefix, f.Name), f.Usage)
			if f.DefValue != "" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
}
