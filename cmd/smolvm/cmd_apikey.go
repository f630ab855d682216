package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/smolvm-go/smolvm"
	"github.com/smolvm-go/smolvm/internal/server"
)

// openKeys opens the API key records of the data directory.
func openKeys(c *cobra.Command, g *globals) (*server.Keys, error) {
	if g.remoteURL() != "" {
		return nil, errLocalOnly()
	}
	dir := g.dataDir
	if dir == "" {
		dir = smolvm.DefaultDataDir()
	}
	return server.OpenKeys(c.Context(), dir)
}

func newAPIKeyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "apikey",
		Short: "Manage the API keys of 'smolvm serve'",
		Long:  "API keys authenticate requests to 'smolvm serve'. Only a SHA-256 of each key is stored; a key is printed once, when created.",
	}
	var name string
	create := &cobra.Command{
		Use:   "create [--name N]",
		Short: "Create a key and print it (once)",
		Args:  args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			ks, err := openKeys(c, g)
			if err != nil {
				return err
			}
			defer ks.Close()
			rec, secret, err := ks.Create(c.Context(), name)
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), map[string]any{"id": rec.ID, "name": rec.Name, "key": secret, "created_at": rec.Created})
			}
			fmt.Fprintln(c.OutOrStdout(), secret)
			fmt.Fprintf(c.ErrOrStderr(), "created API key %s (%s); it is shown only now\n", rec.ID, rec.Name)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a unique name (default: the key's id)")
	create.Flags().BoolVar(&g.jsonOut, "json", false, `print {"id", "name", "key", "created_at"}`)
	list := &cobra.Command{
		Use:   "list",
		Short: "List keys (never the keys themselves)",
		Args:  args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			ks, err := openKeys(c, g)
			if err != nil {
				return err
			}
			defer ks.Close()
			recs, err := ks.List(c.Context())
			if err != nil {
				return err
			}
			if g.jsonOut {
				return writeJSON(c.OutOrStdout(), recs)
			}
			rows := [][]string{}
			for _, k := range recs {
				st := "valid"
				if !k.Revoked.IsZero() {
					st = "revoked"
				}
				last := "-"
				if !k.LastUsed.IsZero() {
					last = ago(k.LastUsed)
				}
				rows = append(rows, []string{k.ID, k.Name, st, ago(k.Created), last})
			}
			return table(c.OutOrStdout(), []string{"ID", "NAME", "STATUS", "CREATED", "LAST USED"}, rows)
		},
	}
	list.Flags().BoolVar(&g.jsonOut, "json", false, "print JSON")
	revoke := &cobra.Command{
		Use:   "revoke ID|NAME",
		Short: "Revoke a key: requests with it are refused from now on",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			ks, err := openKeys(c, g)
			if err != nil {
				return err
			}
			defer ks.Close()
			rec, err := ks.Revoke(c.Context(), a[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), "revoked", rec.ID, rec.Name)
			return nil
		},
	}
	c.AddCommand(create, list, revoke)
	return c
}
